//! PID 1's plugin runner (`ros::net::cni::ReaperRunner`) in a process of its own: it spawns
//! through the reaper, and `waitpid(-1)` must not share a process with other tests' children.

use ros::supervisor::reaper::{Exit, Reaper};
use std::time::{Duration, Instant};

/// PID 1's CNI plugin runner: spawned through the reaper, the exit handed over by whoever
/// reaps (here a thread standing in for the serve loop), stdin/stdout/stderr through pipes.
#[test]
fn reaper_runner_runs_a_program_with_env_and_stdin_and_honours_its_timeout() {
    use ros::net::cni::{Invocation, PluginRunner, ReaperRunner, RunError};
    use ros::supervisor::{waiters, Owner};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let reaper: Arc<Reaper<Owner>> = Arc::new(Reaper::default());
    let stop = Arc::new(AtomicBool::new(false));
    let serve = {
        let (reaper, stop) = (reaper.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for r in reaper.reap() {
                    if let Some(Owner::Waiter(id)) = r.owner {
                        waiters::deliver(id, r.exit);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let runner = ReaperRunner::new(reaper.clone());
    let inv = Invocation {
        program: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            "cat; echo \"$CNI_COMMAND\"; echo oops >&2; exit 3".into(),
        ],
        env: vec![("CNI_COMMAND".into(), "ADD".into())],
        stdin: b"{\"cniVersion\":\"1.0.0\"}\n".to_vec(),
        timeout: Duration::from_secs(10),
    };
    let done = runner.run(&inv).unwrap();
    assert_eq!(done.exit, Exit::Code(3));
    assert_eq!(done.stdout, b"{\"cniVersion\":\"1.0.0\"}\nADD\n");
    assert_eq!(done.stderr_text(), "oops");

    let slow = Invocation {
        args: vec!["-c".into(), "sleep 10".into()],
        timeout: Duration::from_millis(300),
        ..inv
    };
    let started = Instant::now();
    assert!(matches!(runner.run(&slow), Err(RunError::TimedOut { .. })));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(reaper.registered(), 0, "the killed child was reaped");
    stop.store(true, Ordering::SeqCst);
    serve.join().unwrap();

    // On the thread that reaps, a run would wait for itself: refused at once.
    let on_reaper = std::thread::spawn(move || {
        waiters::mark_reaping_thread();
        runner.run(&Invocation {
            program: "/bin/true".into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: Vec::new(),
            timeout: Duration::from_secs(10),
        })
    })
    .join()
    .unwrap();
    assert!(matches!(on_reaper, Err(RunError::ReapingThread { .. })));
}
