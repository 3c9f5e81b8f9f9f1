//! (c) enqueue-to-pickup dispatch latency on an idle runtime.

use std::time::{Duration, Instant};

use duroxide::Client;
use duroxide::runtime::RuntimeOptions;

use crate::config::{Config, progress};
use crate::report::{fmt_num, ms, percentile, table};
use crate::setup::tapped_runtime;
use crate::{Res, WAIT};
pub struct DispatchSummary {
    pub from_return: Vec<f64>,
}

pub async fn run(url: &str, cfg: &Config) -> Res<DispatchSummary> {
    progress(format!("(c) dispatch latency, {} samples", cfg.samples));
    let (tap, rt) = tapped_runtime(url, "dispatch", None, RuntimeOptions::default()).await?;
    let client = Client::new(tap.clone());

    let outcome = async {
        let mut from_return = Vec::new();
        let mut from_call = Vec::new();
        let mut enqueue = Vec::new();
        for i in 0..(cfg.samples + 3) {
            let gap = 50 + rand::random::<u64>() % 151;
            tokio::time::sleep(Duration::from_millis(gap)).await;
            let id = format!("dispatch-{i}");
            let t_call = Instant::now();
            client
                .start_orchestration(&id, "Quick", "")
                .await
                .map_err(|e| format!("start: {e}"))?;
            let t_ret = Instant::now();
            tap.wait_done(&id, WAIT).await?;
            let picked = tap
                .picked_at(&id)
                .ok_or_else(|| format!("{id} finished without a recorded pickup"))?;
            if i < 3 {
                continue; // warm-up
            }
            let signed = |from: Instant| match picked.checked_duration_since(from) {
                Some(d) => ms(d),
                None => -ms(from.duration_since(picked)),
            };
            from_return.push(signed(t_ret));
            from_call.push(signed(t_call));
            enqueue.push(ms(t_ret.duration_since(t_call)));
        }
        Ok::<_, String>((from_return, from_call, enqueue))
    }
    .await;
    rt.shutdown(None).await;
    let (from_return, from_call, enqueue) = outcome?;

    println!(
        "(c) enqueue-to-pickup dispatch latency on an idle runtime, default RuntimeOptions (100 ms min poll \
         interval, 30 s long poll), {} orchestrations started one at a time with random 50-200 ms idle gaps; \
         pickup = the runtime's fetch_orchestration_item call returning the item (timestamped by a delegating \
         Provider wrapper); negative = picked up before the client's enqueue call had returned",
        from_return.len()
    );
    let row = |label: &str, v: &[f64]| {
        vec![
            label.to_owned(),
            fmt_num(percentile(v, 0.5)),
            fmt_num(percentile(v, 0.99)),
            fmt_num(percentile(v, 0.0)),
            fmt_num(percentile(v, 1.0)),
        ]
    };
    table(
        &["measured from", "p50 ms", "p99 ms", "min ms", "max ms"],
        &[
            row("start_orchestration returned -> pickup", &from_return),
            row("start_orchestration called -> pickup", &from_call),
            row("(start_orchestration call duration)", &enqueue),
        ],
    );
    Ok(DispatchSummary { from_return })
}
