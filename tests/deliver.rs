//! Delivery against the stand-in bridge: order, removal, backoff while the bridge is down or
//! refusing, recovery, the lifetime, concurrent runners, and the daemon's delivery thread.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Behaviour, StandInBridge, TestDir};
use smtp_bridge::config::Config;
use smtp_bridge::deliver::{backoff, run_once, DeliveryThread, MIN_ATTEMPTS_TO_EXPIRE};
use smtp_bridge::envelope::{Envelope, Origin};
use smtp_bridge::spool::{QueueId, Spool};

fn test_config(dir: &TestDir, url: &str) -> Config {
    Config {
        queue: url.to_owned(),
        name: "testhost".into(),
        hostname: "testhost".into(),
        spool_dir: dir.join("spool"),
        bridge_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

fn setup(label: &str) -> (TestDir, StandInBridge, Config, Spool) {
    let dir = TestDir::new(label);
    let bridge = StandInBridge::start();
    let config = test_config(&dir, &bridge.url);
    let spool = Spool::new(&config.spool_dir);
    spool.prepare(None).unwrap();
    (dir, bridge, config, spool)
}

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: sender@example.org\r\nTo: owner@example.org\r\nSubject: order-{n}\r\n\r\nbody of message {n}\r\n"
    )
    .into_bytes()
}

fn envelope(arrival: SystemTime) -> Envelope {
    Envelope {
        sender: "sender@example.org".into(),
        recipients: vec!["owner@example.org".into()],
        origin: Origin::Local {
            uid: 1000,
            user: "alice".into(),
            full_name: None,
        },
        arrival,
    }
}

fn enqueue(spool: &Spool, n: usize) -> QueueId {
    enqueue_at(spool, n, SystemTime::now())
}

fn enqueue_at(spool: &Spool, n: usize, arrival: SystemTime) -> QueueId {
    let mut w = spool.create(&envelope(arrival)).unwrap();
    w.write_all(&message(n)).unwrap();
    w.commit().unwrap()
}

/// The `order-N` subjects of what the bridge accepted, in order.
fn delivered(bridge: &StandInBridge) -> Vec<usize> {
    bridge
        .received()
        .iter()
        .map(|r| {
            assert_eq!(r.name, "testhost");
            let at = r
                .reply
                .find("order-")
                .unwrap_or_else(|| panic!("no subject in digest: {}", r.reply));
            r.reply[at + 6..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap()
        })
        .collect()
}

/// Waits until the stand-in listens again after `Down` (it rebinds on its own thread).
fn wait_listening(bridge: &StandInBridge) {
    assert!(
        common::wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(bridge.addr).is_ok()
        }),
        "stand-in bridge did not come back"
    );
}

fn queued(spool: &Spool) -> Vec<QueueId> {
    spool.list().unwrap().into_iter().map(|e| e.id).collect()
}

fn failed_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn bridge_up_delivers_everything_in_order_and_removes_it() {
    let (_dir, bridge, config, spool) = setup("deliver-up");
    for n in 1..=5 {
        enqueue(&spool, n);
    }
    spool.set_backlog(true).unwrap();
    let report = run_once(&config, false).unwrap();
    assert_eq!(report.delivered, 5);
    assert_eq!((report.deferred, report.failed, report.waiting), (0, 0, 0));
    assert_eq!(report.next_due, None);
    assert_eq!(delivered(&bridge), vec![1, 2, 3, 4, 5]);
    assert!(bridge.rejections().is_empty(), "{:?}", bridge.rejections());
    assert!(queued(&spool).is_empty());
    assert!(
        failed_names(&spool.root().join("queue")).is_empty(),
        "nothing left in queue/"
    );
    assert!(
        !spool.has_backlog(),
        "an empty queue clears the backlog marker"
    );
    // Nothing left: a second pass sends nothing.
    assert_eq!(run_once(&config, true).unwrap().delivered, 0);
    assert_eq!(bridge.requests(), 5);
}

#[test]
fn bridge_down_defers_in_order_then_recovery_delivers_each_once() {
    let (_dir, bridge, config, spool) = setup("deliver-down");
    let ids: Vec<QueueId> = (1..=3).map(|n| enqueue(&spool, n)).collect();
    bridge.set_behaviour(Behaviour::Down);

    let before = SystemTime::now();
    let report = run_once(&config, false).unwrap();
    let after = SystemTime::now();
    assert_eq!(
        (report.delivered, report.deferred, report.waiting),
        (0, 1, 2)
    );
    let list = spool.list().unwrap();
    assert_eq!(queued(&spool), ids, "order kept");
    assert_eq!(list[0].attempts, 1);
    assert!(list[0].last_error.is_some());
    assert!(list[0].next_attempt >= before + backoff(1));
    assert!(list[0].next_attempt <= after + backoff(1) + Duration::from_micros(1));
    assert_eq!(report.next_due, Some(list[0].next_attempt));
    // Nothing overtook the head: the others were not even tried.
    assert_eq!((list[1].attempts, list[2].attempts), (0, 0));
    assert!(spool.has_backlog());

    // Not due yet: a pass tries nothing.
    let report = run_once(&config, false).unwrap();
    assert_eq!((report.deferred, report.waiting), (0, 3));
    assert_eq!(spool.list().unwrap()[0].attempts, 1);

    // Errors that are not "down" are deferred the same way, the backoff growing.
    for (behaviour, attempts, code) in [
        (Behaviour::Status(500), 2, "500"),
        (Behaviour::Status(404), 3, "404"),
    ] {
        bridge.set_behaviour(behaviour);
        wait_listening(&bridge);
        let before = SystemTime::now();
        let report = run_once(&config, true).unwrap();
        let after = SystemTime::now();
        assert_eq!((report.delivered, report.deferred), (0, 1), "{behaviour:?}");
        let head = &spool.list().unwrap()[0];
        assert_eq!(head.id, ids[0]);
        assert_eq!(head.attempts, attempts);
        let error = head.last_error.as_deref().unwrap_or_default();
        assert!(error.contains(code), "{behaviour:?}: {error}");
        assert!(head.next_attempt >= before + backoff(attempts));
        assert!(head.next_attempt <= after + backoff(attempts) + Duration::from_micros(1));
    }
    assert!(bridge.received().is_empty());

    // Back up: still waiting for the head's schedule, unless forced.
    bridge.set_behaviour(Behaviour::Accept);
    assert_eq!(run_once(&config, false).unwrap().delivered, 0);
    let report = run_once(&config, true).unwrap();
    assert_eq!(report.delivered, 3);
    assert_eq!(delivered(&bridge), vec![1, 2, 3], "each once, in order");
    assert!(queued(&spool).is_empty());
    assert!(!spool.has_backlog());
}

#[test]
fn an_expired_message_moves_to_failed_and_the_next_one_goes_on() {
    let (_dir, bridge, mut config, spool) = setup("deliver-expire");
    config.queue_lifetime = Duration::from_secs(3600);
    let old = SystemTime::now() - Duration::from_secs(7200);
    let first = enqueue_at(&spool, 1, old);
    let second = enqueue_at(&spool, 2, old + Duration::from_secs(1));
    let young = enqueue(&spool, 3);
    bridge.set_behaviour(Behaviour::Status(503));

    // Past its lifetime, a message still gets MIN_ATTEMPTS_TO_EXPIRE attempts (forced passes
    // here stand for its retries), then goes to failed/, and the next one is tried.
    let mut failed_total = 0;
    for pass in 1..=2 * MIN_ATTEMPTS_TO_EXPIRE {
        let report = run_once(&config, true).unwrap();
        failed_total += report.failed;
        if pass < MIN_ATTEMPTS_TO_EXPIRE {
            assert_eq!((report.failed, report.deferred), (0, 1), "pass {pass}");
        }
    }
    assert_eq!(failed_total, 2);
    assert_eq!(queued(&spool), vec![young.clone()]);
    let failed = spool.root().join("failed");
    for id in [&first, &second] {
        assert!(failed.join(&id.0).is_file());
        let reason = std::fs::read_to_string(failed.join(format!("{id}.reason"))).unwrap();
        assert!(reason.contains("503"), "{reason}");
        assert!(
            reason.contains(&format!("gave up after {MIN_ATTEMPTS_TO_EXPIRE} attempts")),
            "{reason}"
        );
    }
    assert!(spool.has_backlog());

    // The young one is delivered once the bridge is back.
    bridge.set_behaviour(Behaviour::Accept);
    assert_eq!(run_once(&config, true).unwrap().delivered, 1);
    assert_eq!(delivered(&bridge), vec![3]);
    // failed/ is never re-delivered.
    assert_eq!(run_once(&config, true).unwrap().delivered, 0);
    assert_eq!(failed_names(&failed).len(), 4);
}

/// The wall clock stepped back after mail was queued (NTP correcting a fast clock): the
/// queue's schedule, made by the old clock, lies in the future. The messages are due now,
/// instead of holding the ordered queue for as long as the clock went back.
#[test]
fn a_clock_that_stepped_back_does_not_hold_the_queue() {
    let (_dir, bridge, config, spool) = setup("deliver-clock-back");
    let hour = Duration::from_secs(3600);
    // Queued "an hour from now" as far as today's clock can tell: one never tried, one
    // that failed once and was scheduled 10 s after that.
    let fresh = enqueue_at(&spool, 1, SystemTime::now() + hour);
    let tried = enqueue_at(&spool, 2, SystemTime::now() + hour);
    spool
        .defer(&tried, SystemTime::now() + hour + backoff(1), "HTTP 503")
        .unwrap();
    let report = run_once(&config, false).unwrap();
    assert_eq!(report.delivered, 2, "{report:?}");
    assert_eq!(delivered(&bridge), vec![1, 2]);
    let _ = fresh;
}

/// The wall clock stepped forward past the lifetime (a box without a real-time clock, set
/// right by NTP after boot): mail queued before that is not sent to failed/ at its first
/// failure.
#[test]
fn a_clock_that_stepped_forward_does_not_expire_the_backlog_at_once() {
    let (_dir, bridge, config, spool) = setup("deliver-clock-forward");
    let ten_days = Duration::from_secs(10 * 86400);
    for n in 1..=3 {
        enqueue_at(&spool, n, SystemTime::now() - ten_days);
    }
    bridge.set_behaviour(Behaviour::Status(503));
    let report = run_once(&config, false).unwrap();
    assert_eq!((report.failed, report.deferred), (0, 1), "{report:?}");
    assert_eq!(queued(&spool).len(), 3);
    bridge.set_behaviour(Behaviour::Accept);
    assert_eq!(run_once(&config, true).unwrap().delivered, 3);
    assert_eq!(delivered(&bridge), vec![1, 2, 3]);
}

#[test]
fn an_unreadable_queue_file_fails_aside_without_blocking_the_queue() {
    let (_dir, bridge, config, spool) = setup("deliver-corrupt");
    let bad = QueueId::generate();
    std::fs::write(spool.root().join("queue").join(&bad.0), b"garbage\n\nx").unwrap();
    enqueue(&spool, 1);
    let report = run_once(&config, false).unwrap();
    assert_eq!((report.failed, report.delivered), (1, 1));
    assert_eq!(delivered(&bridge), vec![1]);
    let reason =
        std::fs::read_to_string(spool.root().join("failed").join(format!("{bad}.reason"))).unwrap();
    assert!(reason.contains("unreadable spool file"), "{reason}");
}

#[test]
fn maildrop_messages_are_ingested_and_delivered_in_arrival_order() {
    let (_dir, bridge, config, spool) = setup("deliver-maildrop");
    let drop = |n| {
        let mut w = spool.create_maildrop(&envelope(SystemTime::now())).unwrap();
        w.write_all(&message(n)).unwrap();
        w.commit().unwrap();
    };
    drop(1);
    enqueue(&spool, 2);
    drop(3);
    let report = run_once(&config, false).unwrap();
    assert_eq!(report.delivered, 3);
    assert_eq!(delivered(&bridge), vec![1, 2, 3]);
}

#[test]
fn concurrent_runners_never_deliver_twice() {
    let (_dir, bridge, config, spool) = setup("deliver-concurrent");
    for n in 1..=20 {
        enqueue(&spool, n);
    }
    let config = Arc::new(config);
    let runners: Vec<_> = (0..4)
        .map(|_| {
            let config = config.clone();
            std::thread::spawn(move || run_once(&config, true).unwrap().delivered)
        })
        .collect();
    let total: usize = runners.into_iter().map(|r| r.join().unwrap()).sum();
    // A runner that lost the race for the lock delivered nothing; one more pass picks up
    // anything the winner had not seen yet.
    let total = total + run_once(&config, true).unwrap().delivered;
    assert_eq!(total, 20);
    assert_eq!(delivered(&bridge), (1..=20).collect::<Vec<_>>());
    assert_eq!(bridge.requests(), 20, "no request was made twice");
}

#[test]
fn a_held_runner_lock_makes_run_once_a_no_op() {
    let (_dir, bridge, config, spool) = setup("deliver-locked");
    enqueue(&spool, 1);
    let lock = spool.lock_runner(false).unwrap().unwrap();
    assert_eq!(run_once(&config, true).unwrap(), Default::default());
    assert_eq!(bridge.requests(), 0);
    drop(lock);
    assert_eq!(run_once(&config, true).unwrap().delivered, 1);
}

#[test]
fn delivery_thread_delivers_on_nudge_and_retries_when_due() {
    let (dir, bridge, config, spool) = setup("deliver-thread");
    let thread = DeliveryThread::spawn(config.clone()).unwrap();
    enqueue(&spool, 1);
    thread.nudge();
    bridge.wait_for(1, Duration::from_secs(20));

    // A burst of mail and nudges: everything arrives, in order.
    for n in 2..=6 {
        enqueue(&spool, n);
        thread.nudge();
        thread.nudge();
    }
    bridge.wait_for(6, Duration::from_secs(20));
    assert_eq!(delivered(&bridge), (1..=6).collect::<Vec<_>>());

    // Down: the message waits; back up: the thread retries on its own when the backoff
    // (10 s) runs out, without a nudge.
    bridge.set_behaviour(Behaviour::Down);
    enqueue(&spool, 7);
    thread.nudge();
    assert!(common::wait_until(Duration::from_secs(20), || {
        spool.list().unwrap().first().map(|e| e.attempts) == Some(1)
    }));
    bridge.set_behaviour(Behaviour::Accept);
    wait_listening(&bridge);
    bridge.wait_for(7, Duration::from_secs(30));

    // A reload points it at another bridge from the next pass on.
    let other = StandInBridge::start();
    thread.reload(test_config(&dir, &other.url));
    enqueue(&spool, 8);
    thread.nudge();
    other.wait_for(1, Duration::from_secs(20));
    assert_eq!(delivered(&other), vec![8]);
    assert_eq!(bridge.received().len(), 7);

    thread.shutdown(Duration::from_secs(10));
    assert!(queued(&spool).is_empty());
}

#[test]
fn nudges_start_no_pass_while_the_head_of_the_queue_waits() {
    let (dir, bridge, config, spool) = setup("deliver-blocked");
    bridge.set_behaviour(Behaviour::Down);
    let thread = DeliveryThread::spawn(config.clone()).unwrap();
    enqueue(&spool, 1);
    thread.nudge();
    assert!(common::wait_until(Duration::from_secs(20), || {
        spool.list().unwrap().first().map(|e| e.attempts) == Some(1)
    }));
    let passes = thread.passes();
    // Mail keeps arriving while the head waits for its retry (10 s away): each nudge would
    // list the whole queue again only to stop at the same head.
    for n in 2..=20 {
        enqueue(&spool, n);
        thread.nudge();
    }
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        assert_eq!(thread.passes(), passes, "a nudge started a pass");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(spool.list().unwrap().first().map(|e| e.attempts), Some(1));
    // A reload still runs a pass at once (the new bridge may be up).
    let other = StandInBridge::start();
    thread.reload(test_config(&dir, &other.url));
    assert!(common::wait_until(Duration::from_secs(20), || thread
        .passes()
        > passes));
    thread.shutdown(Duration::from_secs(10));
}

#[test]
fn shutdown_with_a_hanging_bridge_keeps_the_message() {
    let (_dir, bridge, mut config, spool) = setup("deliver-hang");
    config.bridge_timeout = Duration::from_secs(2);
    bridge.set_behaviour(Behaviour::Hang);
    let id = enqueue(&spool, 1);
    let thread = DeliveryThread::spawn(config).unwrap();
    assert!(common::wait_until(Duration::from_secs(20), || bridge
        .requests()
        >= 1));
    thread.shutdown(Duration::from_secs(10));
    assert_eq!(queued(&spool), vec![id], "a hung request loses nothing");
    assert!(bridge.received().is_empty());
}

/// The lifetime only decides what happens after a failure: a message older than it is still
/// delivered when the bridge takes it.
#[test]
fn an_old_message_is_still_delivered_when_the_bridge_takes_it() {
    let (_dir, bridge, config, spool) = setup("deliver-epoch");
    enqueue_at(&spool, 1, UNIX_EPOCH);
    assert_eq!(run_once(&config, false).unwrap().delivered, 1);
    assert_eq!(delivered(&bridge), vec![1]);
}

#[test]
fn delivery_thread_picks_up_the_maildrop_without_a_nudge() {
    let (_dir, bridge, config, spool) = setup("deliver-poll");
    let thread = DeliveryThread::spawn_polling(config, Duration::from_millis(200)).unwrap();
    // Let the first pass find an empty spool, then drop mail as `sendmail` would.
    assert!(common::wait_until(Duration::from_secs(20), || spool
        .root()
        .join("queue.lock")
        .exists()));
    let mut w = spool.create_maildrop(&envelope(SystemTime::now())).unwrap();
    w.write_all(&message(1)).unwrap();
    w.commit().unwrap();
    bridge.wait_for(1, Duration::from_secs(20));
    assert_eq!(delivered(&bridge), vec![1]);
    thread.shutdown(Duration::from_secs(10));
}
