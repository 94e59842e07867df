//! The runtime's timers. kith builds tokio with one change (vendor/README.md): the thread sleeps until a
//! timer is due, not until the next 64 ms boundary of the timer wheel past which a timer lies. These tests
//! check that a periodic timer then wakes its thread once a tick, and that timers in every level of the
//! wheel, moved later or not, still fire exactly at their deadlines (on the paused test clock).

use std::time::Duration;
use tokio::time::{Instant, sleep, sleep_until};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// This thread's voluntary context switches so far (each time it blocked: a sleep, a wait).
fn voluntary_switches() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("Linux /proc");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches in /proc/thread-self/status")
}

#[test]
fn a_20_ms_interval_wakes_its_thread_once_a_tick() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let ticks = 64u64;
    let switches = rt.block_on(async {
        let mut interval = tokio::time::interval(ms(20));
        interval.tick().await;
        let before = voluntary_switches();
        for _ in 0..ticks {
            interval.tick().await;
        }
        voluntary_switches() - before
    });
    // 64 ticks span 1.28 s and 20 boundaries of 64 ms; each tick's timer lies past one boundary in about
    // a third of the ticks. Sleeping until those boundaries (tokio as released) made about 84 switches.
    assert!(
        switches <= ticks + 6,
        "{switches} voluntary context switches for {ticks} ticks of 20 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn timers_in_every_level_of_the_wheel_fire_at_their_deadlines() {
    let t0 = Instant::now();
    // Deadlines in level 0 (under 64 ms), level 1 (up to 4 s) and level 2, on and around 64 ms boundaries,
    // registered in no particular order.
    let deadlines = [
        129u64, 5, 4_097, 64, 1_000, 63, 65, 100, 5_000, 127, 4_095, 500, 128, 191, 250_000,
    ];
    let mut tasks = Vec::new();
    for d in deadlines {
        tasks.push(tokio::spawn(async move {
            sleep_until(t0 + ms(d)).await;
            (d, t0.elapsed())
        }));
    }
    // Moved later twice after it was filed (tokio then leaves it in its old slot until that slot is due).
    let moved = tokio::spawn(async move {
        let s = sleep(ms(70));
        tokio::pin!(s);
        tokio::select! {
            _ = &mut s => panic!("fired before it was moved"),
            _ = sleep(ms(10)) => {}
        }
        s.as_mut().reset(t0 + ms(140));
        tokio::select! {
            _ = &mut s => panic!("fired before it was moved again"),
            _ = sleep(ms(100)) => {}
        }
        s.as_mut().reset(t0 + ms(333));
        s.await;
        (333, t0.elapsed())
    });
    tasks.push(moved);
    let mut fired = Vec::new();
    for t in tasks {
        fired.push(t.await.unwrap());
    }
    for (d, at) in fired {
        assert!(
            at >= ms(d) && at < ms(d) + ms(1),
            "the timer due at {d} ms fired at {at:?}"
        );
    }
}
