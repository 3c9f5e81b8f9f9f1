//! The orchestrations and activity of the runtime sections (b), (c), (d),
//! (g), (h).

use duroxide::runtime::registry::ActivityRegistry;
use duroxide::{ActivityContext, OrchestrationContext, OrchestrationRegistry};

/// Activities per orchestration in section (b).
pub const STEPS: u32 = 20;

pub fn activities() -> ActivityRegistry {
    ActivityRegistry::builder()
        .register(
            "Noop",
            |_c: ActivityContext, s: String| async move { Ok(s) },
        )
        .build()
}

pub fn orchestrations() -> OrchestrationRegistry {
    OrchestrationRegistry::builder()
        .register(
            "Seq20",
            |ctx: OrchestrationContext, _input: String| async move {
                for i in 0..STEPS {
                    ctx.schedule_activity("Noop", i.to_string()).await?;
                }
                Ok("done".to_owned())
            },
        )
        .register(
            "SeqN",
            |ctx: OrchestrationContext, input: String| async move {
                let steps: u32 = input.parse().map_err(|e| format!("steps: {e}"))?;
                for i in 0..steps {
                    ctx.schedule_activity("Noop", i.to_string()).await?;
                }
                Ok("done".to_owned())
            },
        )
        .register(
            "One",
            |ctx: OrchestrationContext, input: String| async move {
                ctx.schedule_activity("Noop", input).await
            },
        )
        .register(
            "Quick",
            |_ctx: OrchestrationContext, input: String| async move { Ok(input) },
        )
        .build()
}
