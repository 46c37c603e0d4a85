//! Shared gRPC connections to a containerd: the supervisor of each container borrows a
//! [`Client`] from its daemon's pool instead of dialing a connection of its own. 100 workloads
//! held 100 HTTP/2 connections before, each with its buffers in PID 1 and its goroutines and
//! buffers in containerd.
//!
//! A connection is lent to at most [`PER_CONNECTION`] borrowers at a time: a `Wait` holds an
//! HTTP/2 stream for its container's whole life, and the h2 client assumes at most 100
//! concurrent streams until the server says otherwise. A borrower that saw its connection fail
//! (containerd restarted) hands back its [`Borrowed::connection`] id, and the pool dials anew
//! instead of lending the broken one again. Connections nobody borrows any more are closed at
//! the next borrow.
//!
//! Owns the connections and who holds them; it must not wait for containerd or retry (the
//! supervisor does both).

use super::client::{Client, ClientError};
use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Borrowers per connection in the daemons' pools.
pub const PER_CONNECTION: usize = 32;

struct Conn {
    id: u64,
    client: Client,
    /// One clone per borrower, plus this one.
    users: Arc<()>,
}

impl Conn {
    fn borrowers(&self) -> usize {
        Arc::strong_count(&self.users) - 1
    }
}

/// Every pool of the process, by (socket, namespace).
type Pools = Mutex<HashMap<(PathBuf, String), Arc<Pool>>>;

/// The connections to one containerd socket, for one namespace.
pub struct Pool {
    socket: PathBuf,
    namespace: String,
    per_connection: usize,
    /// The connections, and the id the next one gets.
    conns: tokio::sync::Mutex<(Vec<Conn>, u64)>,
}

/// A client on a pooled connection; the connection counts it until it is dropped.
#[derive(Debug)]
pub struct Borrowed {
    client: Client,
    connection: u64,
    _user: Arc<()>,
}

impl Borrowed {
    /// Which of the pool's connections this is (handed back when it failed).
    pub fn connection(&self) -> u64 {
        self.connection
    }
}

impl Deref for Borrowed {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Pool {
    pub fn new(socket: &Path, namespace: &str, per_connection: usize) -> Self {
        Pool {
            socket: socket.to_owned(),
            namespace: namespace.to_owned(),
            per_connection: per_connection.max(1),
            conns: tokio::sync::Mutex::new((Vec::new(), 1)),
        }
    }

    /// The process's pool for `socket` and `namespace` (one per containerd PID 1 runs).
    pub fn shared(socket: &Path, namespace: &str) -> Arc<Pool> {
        static POOLS: OnceLock<Pools> = OnceLock::new();
        let pools = POOLS.get_or_init(|| Mutex::new(HashMap::new()));
        let mut pools = match pools.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        pools
            .entry((socket.to_owned(), namespace.to_owned()))
            .or_insert_with(|| Arc::new(Pool::new(socket, namespace, PER_CONNECTION)))
            .clone()
    }

    /// A client on a connection with room, dialing one when none has; `failed` is the
    /// connection the caller saw fail, never lent again.
    pub async fn borrow(&self, failed: Option<u64>) -> Result<Borrowed, ClientError> {
        let mut guard = self.conns.lock().await;
        let (conns, next_id) = &mut *guard;
        conns.retain(|c| Some(c.id) != failed && c.borrowers() > 0);
        let conn = match conns
            .iter()
            .position(|c| c.borrowers() < self.per_connection)
        {
            Some(i) => &conns[i],
            None => {
                let client = Client::connect(&self.socket, &self.namespace).await?;
                let id = *next_id;
                *next_id += 1;
                conns.push(Conn {
                    id,
                    client,
                    users: Arc::new(()),
                });
                &conns[conns.len() - 1]
            }
        };
        Ok(Borrowed {
            client: conn.client.clone(),
            connection: conn.id,
            _user: conn.users.clone(),
        })
    }

    /// How many connections the pool holds and how many borrowers each has.
    pub async fn borrowers(&self) -> Vec<usize> {
        self.conns
            .lock()
            .await
            .0
            .iter()
            .map(Conn::borrowers)
            .collect()
    }
}
