//! DHCPv4 client: one task per link, from DISCOVER to RELEASE (RFC 2131 §4.4).
//!
//! Owns: the client state machine — INIT (DISCOVER, OFFER, REQUEST, ACK with exponential
//! backoff, forever, in the background), BOUND (sleep until T1), RENEWING (REQUEST unicast to
//! the server that gave the lease until T2), REBINDING (REQUEST broadcast to any server until the
//! lease ends), back to INIT on NAK or expiry, and RELEASE when asked to stop. Every change is
//! reported to a `LeaseHandler`, which applies it (addresses, routes, DNS) before the client goes
//! on, so a renewal never happens before the address is configured.
//! Must not: touch netlink, files or the hostname (the handler does), or block boot: callers
//! bound their wait on the handler's reports, never on the client.
//!
//! Limitations: no INIT-REBOOT (a reboot asks for a fresh lease), no ARP probe of the offered
//! address (DHCPDECLINE), no classless static routes (option 121).

pub mod lease;
pub mod message;
pub mod socket;

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;

use self::lease::{backoff, retry_in, Timers};
pub use self::message::{Client, LeaseInfo, Reply};

/// Where a client message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// `255.255.255.255:67` out of the bound device.
    Broadcast,
    /// Unicast to a server.
    Server(Ipv4Addr),
}

/// Sends and receives DHCP payloads on one link.
pub trait Transport: Send {
    /// Sends one message.
    fn send<'a>(&'a mut self, bytes: &'a [u8], to: Destination) -> BoxFuture<'a, io::Result<()>>;
    /// Receives the next datagram (any; the client filters).
    fn recv(&mut self) -> BoxFuture<'_, io::Result<Vec<u8>>>;
}

/// Why a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// No server extended it in time.
    Expired,
    /// A server refused it (DHCPNAK).
    Nak,
    /// Given back (DHCPRELEASE) because the client was stopped.
    Released,
}

/// A transport or encoding failure; the client retries after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhcpError {
    /// Sending failed.
    #[error("send DHCP{kind} on {ifname}: {reason}")]
    Send {
        /// DISCOVER, REQUEST, RELEASE.
        kind: &'static str,
        /// The link.
        ifname: String,
        /// The OS error.
        reason: String,
    },
    /// Receiving failed.
    #[error("receive on {ifname}: {reason}")]
    Recv {
        /// The link.
        ifname: String,
        /// The OS error.
        reason: String,
    },
    /// A message could not be built.
    #[error("{ifname}: {source}")]
    Message {
        /// The link.
        ifname: String,
        /// What failed.
        source: message::MessageError,
    },
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpEvent {
    /// A new lease.
    Bound(LeaseInfo),
    /// The lease was extended by its server (at T1).
    Renewed {
        /// The lease before.
        previous: LeaseInfo,
        /// The lease now.
        lease: LeaseInfo,
    },
    /// The lease was extended by some server (after T2).
    Rebound {
        /// The lease before.
        previous: LeaseInfo,
        /// The lease now.
        lease: LeaseInfo,
    },
    /// The lease is gone; its address must be removed.
    Lost {
        /// The lease that ended.
        lease: LeaseInfo,
        /// Why.
        why: LostReason,
    },
    /// Still no lease after `attempts` unanswered DISCOVERs (reported after 1, 3, 7, 15, …).
    NoAnswer {
        /// DISCOVERs sent so far.
        attempts: u32,
    },
    /// A send or receive failed; the client goes on.
    Failed(DhcpError),
}

/// Applies what the client reports. The client waits for each call to finish.
pub trait LeaseHandler: Send + Sync {
    /// Handles one event.
    fn handle(&self, event: DhcpEvent) -> BoxFuture<'_, ()>;
}

/// A random 32-bit number (transaction ids, jitter) from std's per-process random keys.
fn random_u32() -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    (h.finish() >> 16) as u32
}

/// Resolves once `stop` is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// `from + d`, or `None` when that is beyond what an `Instant` can hold (infinite leases).
fn after(from: Instant, d: Duration) -> Option<Instant> {
    from.checked_add(d)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How a RENEWING or REBINDING phase ended.
enum Extend {
    Ack(LeaseInfo, Instant),
    Nak,
    Timeout,
    Stop,
}

/// One DHCP client on one link.
pub struct DhcpClient<T: Transport> {
    ifname: String,
    client: Client,
    transport: T,
    handler: Arc<dyn LeaseHandler>,
    stop: watch::Receiver<bool>,
}

impl<T: Transport> DhcpClient<T> {
    /// A client for `ifname` speaking as `client` over `transport`. It runs until `stop` turns
    /// true (then releases its lease) and reports to `handler`.
    pub fn new(
        ifname: &str,
        client: Client,
        transport: T,
        handler: Arc<dyn LeaseHandler>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        DhcpClient {
            ifname: ifname.to_string(),
            client,
            transport,
            handler,
            stop,
        }
    }

    async fn send(&mut self, kind: &'static str, bytes: Vec<u8>, to: Destination) -> bool {
        match self.transport.send(&bytes, to).await {
            Ok(()) => true,
            Err(e) => {
                let err = DhcpError::Send {
                    kind,
                    ifname: self.ifname.clone(),
                    reason: e.to_string(),
                };
                self.handler.handle(DhcpEvent::Failed(err)).await;
                false
            }
        }
    }

    /// A built message, or the failure to report (as `DhcpEvent::Failed`).
    fn built(&self, r: Result<Vec<u8>, message::MessageError>) -> Result<Vec<u8>, DhcpError> {
        r.map_err(|source| DhcpError::Message {
            ifname: self.ifname.clone(),
            source,
        })
    }

    /// Waits up to `wait` for a reply to `xid` that `want` accepts.
    async fn reply(&mut self, xid: u32, wait: Duration, want: fn(&Reply) -> bool) -> Option<Reply> {
        let deadline = Instant::now() + wait;
        loop {
            let got = tokio::time::timeout_at(deadline, self.transport.recv()).await;
            match got {
                Err(_) => return None,
                Ok(Ok(bytes)) => {
                    if let Some(r) = self.client.parse(&bytes, xid).filter(want) {
                        return Some(r);
                    }
                }
                Ok(Err(e)) => {
                    let err = DhcpError::Recv {
                        ifname: self.ifname.clone(),
                        reason: e.to_string(),
                    };
                    self.handler.handle(DhcpEvent::Failed(err)).await;
                    // Do not spin on a broken socket.
                    tokio::time::sleep_until(deadline).await;
                    return None;
                }
            }
        }
    }

    /// INIT → SELECTING → REQUESTING until a server acknowledges. Returns the lease and when
    /// its REQUEST was sent (the lease's clock starts there).
    async fn acquire(&mut self) -> (LeaseInfo, Instant) {
        let mut attempts: u32 = 0;
        let mut next = Instant::now();
        loop {
            // Never faster than the backoff, also when a server answers at once with a NAK.
            tokio::time::sleep_until(next).await;
            let wait = backoff(attempts, u64::from(random_u32() % 1000));
            next = Instant::now() + wait;
            attempts = attempts.saturating_add(1);
            if attempts > 1 && attempts.is_power_of_two() {
                self.handler
                    .handle(DhcpEvent::NoAnswer {
                        attempts: attempts - 1,
                    })
                    .await;
            }
            let xid = random_u32();
            let discover = match self.built(self.client.discover(xid)) {
                Ok(b) => b,
                Err(ev) => {
                    self.handler.handle(DhcpEvent::Failed(ev)).await;
                    continue;
                }
            };
            if !self
                .send("DISCOVER", discover, Destination::Broadcast)
                .await
            {
                continue;
            }
            let offer = match self
                .reply(xid, wait, |r| matches!(r, Reply::Offer(_)))
                .await
            {
                Some(Reply::Offer(o)) => o,
                _ => continue,
            };
            // REQUEST the offer, retransmitted up to three times.
            for n in 0..3 {
                let request = match self.built(self.client.request_selecting(
                    xid,
                    offer.address,
                    offer.server,
                )) {
                    Ok(b) => b,
                    Err(ev) => {
                        self.handler.handle(DhcpEvent::Failed(ev)).await;
                        break;
                    }
                };
                let sent_at = Instant::now();
                if !self.send("REQUEST", request, Destination::Broadcast).await {
                    break;
                }
                let wait = backoff(n, u64::from(random_u32() % 1000));
                match self
                    .reply(xid, wait, |r| {
                        matches!(r, Reply::Ack(_) | Reply::Nak { .. })
                    })
                    .await
                {
                    Some(Reply::Ack(lease)) => return (lease, sent_at),
                    Some(_) => break,
                    None => continue,
                }
            }
        }
    }

    /// RENEWING (unicast to the server) or REBINDING (broadcast) until `until`.
    async fn extend(&mut self, lease: &LeaseInfo, to: Destination, until: Instant) -> Extend {
        loop {
            let now = Instant::now();
            if now >= until {
                return Extend::Timeout;
            }
            let wait = retry_in(until - now);
            let xid = random_u32();
            let built = match to {
                Destination::Server(_) => self.client.request_renewing(xid, lease.address),
                Destination::Broadcast => self.client.request_rebinding(xid, lease.address),
            };
            let sent = match self.built(built) {
                Ok(bytes) => self.send("REQUEST", bytes, to).await,
                Err(ev) => {
                    self.handler.handle(DhcpEvent::Failed(ev)).await;
                    false
                }
            };
            let mut stop = self.stop.clone();
            let reply = async {
                if sent {
                    self.reply(xid, wait, |r| {
                        matches!(r, Reply::Ack(_) | Reply::Nak { .. })
                    })
                    .await
                } else {
                    tokio::time::sleep(wait).await;
                    None
                }
            };
            tokio::select! {
                _ = stopped(&mut stop) => return Extend::Stop,
                r = reply => match r {
                    Some(Reply::Ack(new)) => return Extend::Ack(new, now),
                    Some(Reply::Nak { .. }) => return Extend::Nak,
                    _ => {}
                },
            }
        }
    }

    async fn release(&mut self, lease: LeaseInfo) {
        let xid = random_u32();
        match self.built(self.client.release(xid, lease.address, lease.server)) {
            Ok(bytes) => {
                self.send("RELEASE", bytes, Destination::Server(lease.server))
                    .await;
            }
            Err(ev) => self.handler.handle(DhcpEvent::Failed(ev)).await,
        }
        let why = LostReason::Released;
        self.handler.handle(DhcpEvent::Lost { lease, why }).await;
    }

    /// Runs the client until stopped; a held lease is released on the way out.
    pub async fn run(mut self) {
        'init: loop {
            let mut stop = self.stop.clone();
            let (mut lease, mut since) = tokio::select! {
                _ = stopped(&mut stop) => return,
                got = self.acquire() => got,
            };
            self.handler.handle(DhcpEvent::Bound(lease.clone())).await;
            loop {
                let timers = Timers::new(lease.lease_s, lease.renew_s, lease.rebind_s);
                let mut stop = self.stop.clone();
                tokio::select! {
                    _ = stopped(&mut stop) => return self.release(lease).await,
                    _ = sleep_until(after(since, timers.renew)) => {}
                }
                let rebind_at = after(since, timers.rebind).unwrap_or_else(Instant::now);
                let server = Destination::Server(lease.server);
                let mut rebinding = false;
                let mut outcome = self.extend(&lease, server, rebind_at).await;
                if matches!(outcome, Extend::Timeout) {
                    rebinding = true;
                    let expire = timers
                        .expire
                        .and_then(|d| after(since, d))
                        .unwrap_or_else(Instant::now);
                    outcome = self.extend(&lease, Destination::Broadcast, expire).await;
                }
                match outcome {
                    Extend::Ack(new, at) => {
                        let previous = std::mem::replace(&mut lease, new.clone());
                        since = at;
                        let ev = if rebinding {
                            DhcpEvent::Rebound {
                                previous,
                                lease: new,
                            }
                        } else {
                            DhcpEvent::Renewed {
                                previous,
                                lease: new,
                            }
                        };
                        self.handler.handle(ev).await;
                    }
                    Extend::Nak => {
                        let why = LostReason::Nak;
                        self.handler.handle(DhcpEvent::Lost { lease, why }).await;
                        continue 'init;
                    }
                    Extend::Timeout => {
                        let why = LostReason::Expired;
                        self.handler.handle(DhcpEvent::Lost { lease, why }).await;
                        continue 'init;
                    }
                    Extend::Stop => return self.release(lease).await,
                }
            }
        }
    }
}

/// A scripted DHCP server behind a `Transport`, for unit tests.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use dhcproto::v4::{DhcpOption, Message, MessageType};
    use dhcproto::Decodable;
    use std::sync::Mutex;
    use tokio::sync::mpsc;

    /// How the fake server behaves.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Mode {
        /// Answers everything.
        Answer,
        /// Never answers.
        Silent,
        /// Answers the first lease, then refuses renewals.
        NakRenewals,
        /// Answers the first lease, then nothing.
        GoneAfterBind,
    }

    /// What the server saw.
    #[derive(Debug, Default)]
    pub(crate) struct Seen {
        /// (message type, destination, ciaddr) of every client message.
        pub(crate) sent: Vec<(MessageType, Destination, Ipv4Addr)>,
        /// ACKs given.
        pub(crate) acks: usize,
    }

    /// The server: answers with `yiaddr` and `options` (plus type and server id 10.0.2.2).
    pub(crate) struct FakeServer {
        pub(crate) mode: Mode,
        pub(crate) yiaddr: Ipv4Addr,
        pub(crate) options: Vec<DhcpOption>,
        pub(crate) seen: Arc<Mutex<Seen>>,
        tx: mpsc::UnboundedSender<Vec<u8>>,
        rx: mpsc::UnboundedReceiver<Vec<u8>>,
    }

    impl FakeServer {
        pub(crate) fn new(mode: Mode, yiaddr: Ipv4Addr, options: Vec<DhcpOption>) -> Self {
            let (tx, rx) = mpsc::unbounded_channel();
            FakeServer {
                mode,
                yiaddr,
                options,
                seen: Arc::new(Mutex::new(Seen::default())),
                tx,
                rx,
            }
        }
    }

    impl Transport for FakeServer {
        fn send<'a>(
            &'a mut self,
            bytes: &'a [u8],
            to: Destination,
        ) -> BoxFuture<'a, io::Result<()>> {
            Box::pin(async move {
                let Ok(m) = Message::from_bytes(bytes) else {
                    return Ok(());
                };
                let Some(kind) = m.opts().msg_type() else {
                    return Ok(());
                };
                let acks = {
                    let Ok(mut seen) = self.seen.lock() else {
                        return Ok(());
                    };
                    seen.sent.push((kind, to, m.ciaddr()));
                    seen.acks
                };
                let ip = self.yiaddr;
                let reply = match (self.mode, kind) {
                    (Mode::Silent, _) => None,
                    (_, MessageType::Discover) => Some((MessageType::Offer, ip)),
                    (Mode::NakRenewals, MessageType::Request) if acks > 0 => {
                        Some((MessageType::Nak, Ipv4Addr::UNSPECIFIED))
                    }
                    (Mode::GoneAfterBind, MessageType::Request) if acks > 0 => None,
                    (_, MessageType::Request) => Some((MessageType::Ack, ip)),
                    _ => None,
                };
                if let Some((kind, yiaddr)) = reply {
                    if kind == MessageType::Ack {
                        if let Ok(mut seen) = self.seen.lock() {
                            seen.acks += 1;
                        }
                    }
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&m.chaddr()[..6]);
                    let bytes = message::tests::server_reply(
                        kind,
                        m.xid(),
                        crate::net::plan::Mac(mac),
                        yiaddr,
                        &self.options,
                    );
                    let _ = self.tx.send(bytes);
                }
                Ok(())
            })
        }

        fn recv(&mut self) -> BoxFuture<'_, io::Result<Vec<u8>>> {
            Box::pin(async move {
                match self.rx.recv().await {
                    Some(b) => Ok(b),
                    None => std::future::pending().await,
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{FakeServer, Mode, Seen};
    use super::*;
    use crate::net::plan::Mac;
    use dhcproto::v4::{DhcpOption, MessageType};
    use std::sync::Mutex;

    const LEASE: [DhcpOption; 5] = [
        DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
        DhcpOption::AddressLeaseTime(120),
        DhcpOption::Renewal(10),
        DhcpOption::Rebinding(60),
        DhcpOption::InterfaceMtu(1500),
    ];

    #[derive(Default)]
    struct Recorder {
        events: Mutex<Vec<(Duration, DhcpEvent)>>,
        start: Mutex<Option<Instant>>,
    }

    impl LeaseHandler for Recorder {
        fn handle(&self, event: DhcpEvent) -> BoxFuture<'_, ()> {
            Box::pin(async move {
                let start = self
                    .start
                    .lock()
                    .ok()
                    .and_then(|s| *s)
                    .unwrap_or_else(Instant::now);
                if let Ok(mut e) = self.events.lock() {
                    e.push((start.elapsed(), event));
                }
            })
        }
    }

    impl Recorder {
        fn kinds(&self) -> Vec<String> {
            self.events
                .lock()
                .map(|e| {
                    e.iter()
                        .map(|(_, ev)| match ev {
                            DhcpEvent::Bound(_) => "bound".to_string(),
                            DhcpEvent::Renewed { .. } => "renewed".into(),
                            DhcpEvent::Rebound { .. } => "rebound".into(),
                            DhcpEvent::Lost { why, .. } => format!("lost {why:?}"),
                            DhcpEvent::NoAnswer { attempts } => format!("no answer {attempts}"),
                            DhcpEvent::Failed(e) => format!("failed {e}"),
                        })
                        .collect()
                })
                .unwrap_or_default()
        }

        fn at(&self, i: usize) -> Duration {
            self.events
                .lock()
                .ok()
                .and_then(|e| e.get(i).map(|(t, _)| *t))
                .unwrap_or_default()
        }
    }

    struct Run {
        seen: Arc<Mutex<Seen>>,
        rec: Arc<Recorder>,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(mode: Mode) -> Run {
        let mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
        let server = FakeServer::new(mode, Ipv4Addr::new(10, 0, 2, 15), LEASE.to_vec());
        let seen = server.seen.clone();
        let rec = Arc::new(Recorder::default());
        if let Ok(mut s) = rec.start.lock() {
            *s = Some(Instant::now());
        }
        let (stop, stop_rx) = watch::channel(false);
        let client = Client {
            mac,
            hostname: None,
        };
        let c = DhcpClient::new("eth0", client, server, rec.clone(), stop_rx);
        let task = tokio::spawn(c.run());
        Run {
            seen,
            rec,
            stop,
            task,
        }
    }

    fn sent(seen: &Mutex<Seen>) -> Vec<(MessageType, Destination, Ipv4Addr)> {
        seen.lock().map(|s| s.sent.clone()).unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn test_bind_renew_at_t1_unicast_and_release_on_stop() {
        let run = start(Mode::Answer);
        tokio::time::sleep(Duration::from_secs(25)).await;
        let _ = run.stop.send(true);
        let _ = run.task.await;
        assert_eq!(
            run.rec.kinds(),
            ["bound", "renewed", "renewed", "lost Released"]
        );
        // T1 = 10 s after the REQUEST: renewals at 10 s and 20 s.
        assert_eq!(run.rec.at(1).as_secs(), 10);
        assert_eq!(run.rec.at(2).as_secs(), 20);
        let server = Destination::Server(Ipv4Addr::new(10, 0, 2, 2));
        let ip = Ipv4Addr::new(10, 0, 2, 15);
        assert_eq!(
            sent(&run.seen),
            [
                (
                    MessageType::Discover,
                    Destination::Broadcast,
                    Ipv4Addr::UNSPECIFIED
                ),
                (
                    MessageType::Request,
                    Destination::Broadcast,
                    Ipv4Addr::UNSPECIFIED
                ),
                (MessageType::Request, server, ip),
                (MessageType::Request, server, ip),
                (MessageType::Release, server, ip),
            ]
        );
        let lease = run.rec.events.lock().ok().and_then(|e| match &e[0].1 {
            DhcpEvent::Bound(l) => Some(l.clone()),
            _ => None,
        });
        assert_eq!(
            lease.map(|l| (l.address, l.prefix_len, l.mtu)),
            Some((ip, 24, Some(1500)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn test_silent_server_is_retried_with_backoff_and_stops_cleanly() {
        let run = start(Mode::Silent);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let _ = run.stop.send(true);
        let _ = run.task.await;
        // Timeouts 1, 2, 4, 8, 16 s (+ jitter < 1 s each): 5 DISCOVERs in 30 s, no lease, and
        // nothing to release.
        let discovers = sent(&run.seen)
            .iter()
            .filter(|(k, _, _)| *k == MessageType::Discover)
            .count();
        assert_eq!(discovers, 5);
        assert_eq!(run.rec.kinds(), ["no answer 1", "no answer 3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn test_nak_on_renewal_drops_the_lease_and_starts_over() {
        let run = start(Mode::NakRenewals);
        tokio::time::sleep(Duration::from_secs(11)).await;
        let _ = run.stop.send(true);
        let _ = run.task.await;
        let kinds = run.rec.kinds();
        assert_eq!(kinds[..2], ["bound", "lost Nak"]);
    }

    #[tokio::test(start_paused = true)]
    async fn test_gone_server_means_rebinding_then_expiry() {
        let run = start(Mode::GoneAfterBind);
        tokio::time::sleep(Duration::from_secs(121)).await;
        let _ = run.stop.send(true);
        let _ = run.task.await;
        let kinds = run.rec.kinds();
        assert_eq!(kinds[..2], ["bound", "lost Expired"]);
        assert_eq!(run.rec.at(1).as_secs(), 120);
        let s = sent(&run.seen);
        let renews = s
            .iter()
            .filter(|(k, d, _)| *k == MessageType::Request && matches!(d, Destination::Server(_)))
            .count();
        let rebinds = s
            .iter()
            .filter(|(k, d, c)| {
                *k == MessageType::Request && *d == Destination::Broadcast && !c.is_unspecified()
            })
            .count();
        // Renewing from 10 s to 60 s, rebinding from 60 s to 120 s, each at half the time left.
        assert!(renews >= 3, "{renews} renewals");
        assert!(rebinds >= 3, "{rebinds} rebinds");
        assert!(s.iter().any(|(k, _, _)| *k == MessageType::Discover));
    }
}
