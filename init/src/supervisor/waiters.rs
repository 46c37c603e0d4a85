//! Exit waiters: how code outside PID 1's serve loop waits for a child it spawned through the
//! one reaper (a CNI plugin, iptables) without calling `wait` itself.
//!
//! Owns a process-wide table of waiter ids → channels. A spawner registers first (getting an
//! id and a receiver), spawns with `Owner::Waiter(id)` through `Reaper::spawn`, and blocks on
//! the receiver; the serve loop hands every reaped `Owner::Waiter(id)` exit to [`deliver`].
//! Must not: wait for or reap processes (only the reaper does), or block: `deliver` only sends.
//!
//! Limitations: while `Daemons::stop` waits for containerd at shutdown it reaps for itself and
//! drops other exits, so a waiter whose child ends in that window times out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;

use super::reaper::Exit;

/// Identifies one registered waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WaiterId(u64);

static NEXT: AtomicU64 = AtomicU64::new(1);
static WAITERS: Mutex<BTreeMap<u64, Sender<Exit>>> = Mutex::new(BTreeMap::new());

static REAPING_THREAD: OnceLock<ThreadId> = OnceLock::new();

/// Marks the calling thread as the one that reaps and delivers (PID 1's main thread). A
/// waiter on that thread would wait for itself: [`on_reaping_thread`] lets spawners refuse.
pub fn mark_reaping_thread() {
    let _ = REAPING_THREAD.set(std::thread::current().id());
}

/// Whether the calling thread is the one marked by [`mark_reaping_thread`].
pub fn on_reaping_thread() -> bool {
    REAPING_THREAD
        .get()
        .is_some_and(|id| *id == std::thread::current().id())
}

/// Registers a waiter; its exit arrives on the receiver once the reaper collected it.
pub fn register() -> (WaiterId, Receiver<Exit>) {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = channel();
    WAITERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, tx);
    (WaiterId(id), rx)
}

/// Forgets a waiter whose child was never spawned (or no longer matters).
pub fn cancel(id: WaiterId) {
    WAITERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id.0);
}

/// Hands a reaped exit to its waiter. Returns false when nobody waits for it any more.
pub fn deliver(id: WaiterId, exit: Exit) -> bool {
    let tx = WAITERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id.0);
    tx.is_some_and(|tx| tx.send(exit).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_reaches_its_waiter_once() {
        let (id, rx) = register();
        assert!(deliver(id, Exit::Code(3)));
        assert_eq!(rx.recv().ok(), Some(Exit::Code(3)));
        assert!(!deliver(id, Exit::Code(4)), "delivered twice");
        let (id, _rx) = register();
        cancel(id);
        assert!(!deliver(id, Exit::Code(0)));
    }
}
