//! The reaper in a process of its own: `waitpid(-1)` collects every child of the process, so it
//! must not share one with other tests that spawn children.

use ros::supervisor::reaper::{Exit, Reaped, Reaper};
use std::process::Command;
use std::time::{Duration, Instant};

fn reap_until(
    r: &Reaper<&'static str>,
    pid: nix::unistd::Pid,
    seen: &mut Vec<Reaped<&'static str>>,
) -> Reaped<&'static str> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        seen.extend(r.reap());
        if let Some(i) = seen.iter().position(|x| x.pid == pid) {
            return seen.remove(i);
        }
        assert!(Instant::now() < deadline, "child {pid} never reaped");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn reaper_hands_exits_to_owners_and_collects_orphans() {
    let r = Reaper::default();
    let mut seen = Vec::new();

    let pid = r
        .spawn(Command::new("sh").args(["-c", "exit 7"]), "seven")
        .unwrap();
    let got = reap_until(&r, pid, &mut seen);
    assert_eq!((got.exit, got.owner), (Exit::Code(7), Some("seven")));

    let pid = r
        .spawn(Command::new("sh").args(["-c", "kill -9 $$"]), "nine")
        .unwrap();
    assert_eq!(reap_until(&r, pid, &mut seen).exit, Exit::Signal(9));
    assert_eq!(r.registered(), 0, "reaped children are unregistered");

    // A child nobody registered (spawned behind the reaper's back) is still reaped, ownerless.
    let stray = Command::new("true").spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(stray.id() as i32);
    drop(stray);
    let got = reap_until(&r, pid, &mut seen);
    assert_eq!((got.exit, got.owner), (Exit::Code(0), None));

    // reap_where takes only the owners it is asked for; the others wait for reap().
    let helper = r
        .spawn(Command::new("sh").args(["-c", "exit 3"]), "helper")
        .unwrap();
    let other = r
        .spawn(Command::new("sh").args(["-c", "exit 4"]), "daemon")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = r.reap_where(|o| *o == "helper");
        if !got.is_empty() {
            break got;
        }
        assert!(Instant::now() < deadline, "helper {helper} never reaped");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].pid, got[0].exit, got[0].owner),
        (helper, Exit::Code(3), Some("helper"))
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(r.reap_where(|o| *o == "helper").is_empty());
    let got = reap_until(&r, other, &mut seen);
    assert_eq!((got.exit, got.owner), (Exit::Code(4), Some("daemon")));
}
