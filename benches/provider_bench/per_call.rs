//! (e) round trips per hot-path call, each measured alone after a warm-up
//! call of the same kind (as tests/round_trips.rs asserts).

use std::time::Duration;

use duroxide::providers::{Provider, ProviderError, TagFilter};
use duroxide_diesel_testkit::items::{self, activity_item, completion_item, start_item};

use crate::Res;
use crate::config::progress;
use crate::report::table;
use crate::setup::{build_pg, new_schema, start_proxy};
pub struct PerCall {
    pub rows: Vec<(&'static str, u64, u64)>,
}

pub async fn run(url: &str) -> Res<PerCall> {
    progress("(e) round trips per hot-path call");
    const LOCK: Duration = Duration::from_secs(30);
    let schema = new_schema("percall");
    let host = start_proxy(url, Duration::ZERO).await?;
    let p = build_pg(&host.proxy().url(url), &schema).await?;
    let px = host.proxy();
    let mut rows: Vec<(&'static str, u64, u64)> = Vec::new();
    let e = |what: &'static str| move |err: ProviderError| format!("{what}: {err}");
    let some = |what: &'static str| format!("{what}: nothing to fetch");

    macro_rules! measure {
        ($name:expr, $call:expr) => {{
            let (out, snap) = px.measure_snapshot($call).await;
            rows.push(($name, snap.round_trips, snap.connections));
            out
        }};
    }

    // Orchestrator queue.
    p.enqueue_for_orchestrator(start_item("a"), None)
        .await
        .map_err(e("enqueue"))?;
    measure!(
        "enqueue_for_orchestrator",
        p.enqueue_for_orchestrator(start_item("b"), None)
    )
    .map_err(e("enqueue"))?;
    let (ia, ta, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .map_err(e("fetch"))?
        .ok_or_else(|| some("fetch"))?;
    let (ib, tb, _) = measure!(
        "fetch_orchestration_item",
        p.fetch_orchestration_item(LOCK, Duration::ZERO, None)
    )
    .map_err(e("fetch"))?
    .ok_or_else(|| some("fetch"))?;
    items::ack_first_turn(&p, &ia.instance, &ta)
        .await
        .map_err(e("ack first turn"))?;
    measure!(
        "ack_orchestration_item",
        items::ack_first_turn(&p, &ib.instance, &tb)
    )
    .map_err(e("ack first turn"))?;
    p.read(&ia.instance).await.map_err(e("read"))?;
    measure!("read", p.read(&ib.instance)).map_err(e("read"))?;

    p.enqueue_for_orchestrator(start_item("c"), None)
        .await
        .map_err(e("enqueue"))?;
    let (_, tc, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .map_err(e("fetch"))?
        .ok_or_else(|| some("fetch"))?;
    p.renew_orchestration_item_lock(&tc, LOCK)
        .await
        .map_err(e("renew"))?;
    measure!(
        "renew_orchestration_item_lock",
        p.renew_orchestration_item_lock(&tc, LOCK)
    )
    .map_err(e("renew"))?;
    p.abandon_orchestration_item(&tc, None, false)
        .await
        .map_err(e("abandon"))?;
    let (_, tc, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .map_err(e("fetch"))?
        .ok_or_else(|| some("fetch"))?;
    measure!(
        "abandon_orchestration_item",
        p.abandon_orchestration_item(&tc, None, false)
    )
    .map_err(e("abandon"))?;

    // Worker queue.
    p.enqueue_for_worker(activity_item("a", 1))
        .await
        .map_err(e("enqueue worker"))?;
    measure!(
        "enqueue_for_worker",
        p.enqueue_for_worker(activity_item("a", 2))
    )
    .map_err(e("enqueue worker"))?;
    p.enqueue_for_worker(activity_item("a", 3))
        .await
        .map_err(e("enqueue worker"))?;
    let filter = TagFilter::DefaultOnly;
    let (_, w1, _) = p
        .fetch_work_item(LOCK, Duration::ZERO, None, &filter)
        .await
        .map_err(e("fetch work"))?
        .ok_or_else(|| some("fetch work"))?;
    let (_, w2, _) = measure!(
        "fetch_work_item",
        p.fetch_work_item(LOCK, Duration::ZERO, None, &filter)
    )
    .map_err(e("fetch work"))?
    .ok_or_else(|| some("fetch work"))?;
    p.ack_work_item(&w1, Some(completion_item("a", 1)))
        .await
        .map_err(e("ack work"))?;
    measure!(
        "ack_work_item",
        p.ack_work_item(&w2, Some(completion_item("a", 2)))
    )
    .map_err(e("ack work"))?;
    let (_, w3, _) = p
        .fetch_work_item(LOCK, Duration::ZERO, None, &filter)
        .await
        .map_err(e("fetch work"))?
        .ok_or_else(|| some("fetch work"))?;
    p.renew_work_item_lock(&w3, LOCK)
        .await
        .map_err(e("renew work"))?;
    measure!("renew_work_item_lock", p.renew_work_item_lock(&w3, LOCK)).map_err(e("renew work"))?;
    p.abandon_work_item(&w3, None, false)
        .await
        .map_err(e("abandon work"))?;
    let (_, w3, _) = p
        .fetch_work_item(LOCK, Duration::ZERO, None, &filter)
        .await
        .map_err(e("fetch work"))?
        .ok_or_else(|| some("fetch work"))?;
    measure!("abandon_work_item", p.abandon_work_item(&w3, None, false))
        .map_err(e("abandon work"))?;

    drop(p);
    println!(
        "(e) round trips per hot-path call, each call measured alone on a warm pooled connection \
         (proxy, no delay)"
    );
    table(
        &["call", "round trips", "connections opened"],
        &rows
            .iter()
            .map(|(n, r, c)| vec![(*n).to_owned(), r.to_string(), c.to_string()])
            .collect::<Vec<_>>(),
    );
    Ok(PerCall { rows })
}
