//! ProviderAdmin: listing, inspection, deletion and pruning.

use duroxide::Event;
use duroxide::providers::{
    DeleteInstanceResult, ExecutionInfo, InstanceFilter, InstanceInfo, ProviderAdmin,
    ProviderError, PruneOptions, PruneResult, QueueDepths, SystemMetrics,
};

use crate::PostgresProvider;

fn unavailable(op: &str) -> ProviderError {
    ProviderError::permanent(op, "not available yet")
}

#[async_trait::async_trait]
impl ProviderAdmin for PostgresProvider {
    async fn list_instances(&self) -> Result<Vec<String>, ProviderError> {
        Err(unavailable("list_instances"))
    }
    async fn list_instances_by_status(&self, _status: &str) -> Result<Vec<String>, ProviderError> {
        Err(unavailable("list_instances_by_status"))
    }
    async fn list_executions(&self, _instance: &str) -> Result<Vec<u64>, ProviderError> {
        Err(unavailable("list_executions"))
    }
    async fn read_history_with_execution_id(
        &self,
        _i: &str,
        _e: u64,
    ) -> Result<Vec<Event>, ProviderError> {
        Err(unavailable("read_history_with_execution_id"))
    }
    async fn read_history(&self, _instance: &str) -> Result<Vec<Event>, ProviderError> {
        Err(unavailable("read_history"))
    }
    async fn latest_execution_id(&self, _instance: &str) -> Result<u64, ProviderError> {
        Err(unavailable("latest_execution_id"))
    }
    async fn get_instance_info(&self, _instance: &str) -> Result<InstanceInfo, ProviderError> {
        Err(unavailable("get_instance_info"))
    }
    async fn get_execution_info(&self, _i: &str, _e: u64) -> Result<ExecutionInfo, ProviderError> {
        Err(unavailable("get_execution_info"))
    }
    async fn get_system_metrics(&self) -> Result<SystemMetrics, ProviderError> {
        Err(unavailable("get_system_metrics"))
    }
    async fn get_queue_depths(&self) -> Result<QueueDepths, ProviderError> {
        Err(unavailable("get_queue_depths"))
    }
    async fn list_children(&self, _instance_id: &str) -> Result<Vec<String>, ProviderError> {
        Err(unavailable("list_children"))
    }
    async fn get_parent_id(&self, _instance_id: &str) -> Result<Option<String>, ProviderError> {
        Err(unavailable("get_parent_id"))
    }
    async fn delete_instances_atomic(
        &self,
        _ids: &[String],
        _force: bool,
    ) -> Result<DeleteInstanceResult, ProviderError> {
        Err(unavailable("delete_instances_atomic"))
    }
    async fn delete_instance_bulk(
        &self,
        _filter: InstanceFilter,
    ) -> Result<DeleteInstanceResult, ProviderError> {
        Err(unavailable("delete_instance_bulk"))
    }
    async fn prune_executions(
        &self,
        _instance_id: &str,
        _options: PruneOptions,
    ) -> Result<PruneResult, ProviderError> {
        Err(unavailable("prune_executions"))
    }
    async fn prune_executions_bulk(
        &self,
        _filter: InstanceFilter,
        _options: PruneOptions,
    ) -> Result<PruneResult, ProviderError> {
        Err(unavailable("prune_executions_bulk"))
    }
}
