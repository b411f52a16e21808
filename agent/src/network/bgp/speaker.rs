//! The BGP speaker: listens for peers, runs one [`session`](super::session) per configured
//! peer, advertises the node's prefixes to all of them and reports what they advertise as
//! [`RouteEvent`]s.
//!
//! Owns the listener, the set of peers and the local prefixes. Connections from addresses
//! that are not configured peers are closed unanswered. It must not install routes: the
//! receiver of the events does (with its own route protocol number).
use std::{
    collections::{BTreeSet, HashMap},
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::timeout,
};
use tracing::Instrument;

use super::{
    error::subcode,
    fsm::FsmConfig,
    message::BGP_PORT,
    prefix::Ipv4Prefix,
    session::{self, SessionInput, SessionParams},
};

/// corten's default AS (Calico's too): a private 2-octet AS.
pub const DEFAULT_LOCAL_AS: u32 = 64512;
/// The default hold time, seconds (RFC 4271 §10 suggests 90).
pub const DEFAULT_HOLD_TIME: u16 = 90;
/// Route events queued before sessions wait for the receiver.
const EVENT_QUEUE: usize = 4096;
/// Incoming connections queued per peer before more are refused.
const INCOMING_QUEUE: usize = 4;
/// How long a stopping session may take to send its Cease.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A BGP neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its address: where we connect, and where its connections must come from.
    pub address: Ipv4Addr,
    /// The AS it must announce; ours makes it an internal peer.
    pub remote_as: u32,
    /// The port it listens on (179 when unset).
    pub port: Option<u16>,
}

/// How the speaker runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerConfig {
    /// Our AS.
    pub local_as: u32,
    /// Our BGP Identifier: the node's IPv4 address, which is also the NEXT_HOP of our
    /// prefixes.
    pub router_id: Ipv4Addr,
    /// Where to listen. Outgoing connections come from this address unless it is
    /// unspecified.
    pub listen: SocketAddr,
    /// The hold time we propose, seconds: 0 or at least 3.
    pub hold_time: u16,
    /// First connect retry interval (doubling after each failure).
    pub connect_retry: Duration,
    /// Longest connect retry interval.
    pub connect_retry_max: Duration,
    /// The peers at start.
    pub peers: Vec<PeerConfig>,
    /// The prefixes advertised at start.
    pub prefixes: Vec<Ipv4Prefix>,
}

impl SpeakerConfig {
    /// Defaults: AS 64512, listening on port 179 of every address, hold time 90 s, retries
    /// from 5 s up to 60 s, no peers and no prefixes yet.
    pub fn new(router_id: Ipv4Addr) -> Self {
        Self {
            local_as: DEFAULT_LOCAL_AS,
            router_id,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), BGP_PORT),
            hold_time: DEFAULT_HOLD_TIME,
            connect_retry: Duration::from_secs(5),
            connect_retry_max: Duration::from_secs(60),
            peers: Vec::new(),
            prefixes: Vec::new(),
        }
    }

    fn check(&self) -> Result<(), SpeakerError> {
        if self.hold_time == 1 || self.hold_time == 2 {
            return Err(SpeakerError::HoldTime(self.hold_time));
        }
        if self.router_id.is_unspecified() {
            return Err(SpeakerError::RouterId);
        }
        if self.local_as == 0 {
            return Err(SpeakerError::ZeroAs);
        }
        self.peers.iter().try_for_each(check_peer)
    }
}

fn check_peer(peer: &PeerConfig) -> Result<(), SpeakerError> {
    if peer.remote_as == 0 {
        return Err(SpeakerError::ZeroAs);
    }
    Ok(())
}

/// A change to the routes the peers advertise. Per `(peer, prefix)`, a `Learned` replaces
/// any earlier one; when a session goes down every route learned over it is withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteEvent {
    /// `peer` advertises `prefix` via `next_hop`.
    Learned {
        /// The destination.
        prefix: Ipv4Prefix,
        /// Where to send its traffic.
        next_hop: Ipv4Addr,
        /// The peer that advertised it.
        peer: Ipv4Addr,
    },
    /// `peer` no longer advertises `prefix`.
    Withdrawn {
        /// The destination.
        prefix: Ipv4Prefix,
        /// The peer that advertised it.
        peer: Ipv4Addr,
    },
}

/// Why the speaker could not start or take a command.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    /// The listen address is taken or not ours.
    #[error("cannot listen for BGP on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// RFC 4271 allows hold times of 0 or at least 3 seconds.
    #[error("hold time {0} s is not allowed: use 0 or at least 3")]
    HoldTime(u16),
    /// The BGP Identifier must not be 0.0.0.0.
    #[error("the router id (the node's IPv4 address) must not be 0.0.0.0")]
    RouterId,
    /// AS 0 is reserved (RFC 7607).
    #[error("AS 0 is reserved")]
    ZeroAs,
    /// The speaker task has ended.
    #[error("the BGP speaker has stopped")]
    Stopped,
}

enum Command {
    AddPeer(PeerConfig),
    RemovePeer(Ipv4Addr),
    SetPeers(Vec<PeerConfig>),
    Shutdown(oneshot::Sender<()>),
}

/// A running BGP speaker. Dropping it also ends the sessions (the runner sees its command
/// channel close), without waiting for them.
#[derive(Debug)]
pub struct Speaker {
    commands: mpsc::Sender<Command>,
    prefixes: watch::Sender<BTreeSet<Ipv4Prefix>>,
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AddPeer(peer) => write!(f, "AddPeer({peer:?})"),
            Self::RemovePeer(address) => write!(f, "RemovePeer({address})"),
            Self::SetPeers(peers) => write!(f, "SetPeers({peers:?})"),
            Self::Shutdown(_) => write!(f, "Shutdown"),
        }
    }
}

impl Speaker {
    /// Binds `config.listen` and starts; route events arrive on the returned receiver,
    /// which must be read.
    pub async fn start(
        config: SpeakerConfig,
    ) -> Result<(Self, mpsc::Receiver<RouteEvent>), SpeakerError> {
        config.check()?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| SpeakerError::Listen {
                    address: config.listen,
                    source,
                })?;
        Self::start_on(config, listener)
    }

    /// Starts on a listener bound by the caller (`config.listen` then only names the source
    /// address of outgoing connections).
    pub fn start_on(
        config: SpeakerConfig,
        listener: TcpListener,
    ) -> Result<(Self, mpsc::Receiver<RouteEvent>), SpeakerError> {
        config.check()?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| SpeakerError::Listen {
                address: config.listen,
                source,
            })?;
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (commands_tx, commands_rx) = mpsc::channel(16);
        let (prefixes_tx, prefixes_rx) = watch::channel(config.prefixes.iter().copied().collect());
        let runner = Runner {
            config,
            sessions: HashMap::new(),
            prefixes: prefixes_rx,
            events: events_tx,
        };
        let task = tokio::spawn(runner.run(listener, commands_rx));
        Ok((
            Self {
                commands: commands_tx,
                prefixes: prefixes_tx,
                local_addr,
                task,
            },
            events_rx,
        ))
    }

    /// Where the speaker listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the advertised prefixes; every established session is updated.
    pub fn set_prefixes(&self, prefixes: impl IntoIterator<Item = Ipv4Prefix>) {
        let prefixes: BTreeSet<Ipv4Prefix> = prefixes.into_iter().collect();
        self.prefixes.send_if_modified(|current| {
            let changed = *current != prefixes;
            *current = prefixes;
            changed
        });
    }

    /// Adds a peer, or replaces a different one at the same address (restarting its
    /// session); adding a peer exactly as configured changes nothing.
    pub async fn add_peer(&self, peer: PeerConfig) -> Result<(), SpeakerError> {
        check_peer(&peer)?;
        self.command(Command::AddPeer(peer)).await
    }

    /// Makes `peers` the whole set: sessions of peers not in it end, new peers get one,
    /// unchanged peers keep theirs. Suits a loop that follows the cluster's nodes.
    pub async fn set_peers(&self, peers: Vec<PeerConfig>) -> Result<(), SpeakerError> {
        peers.iter().try_for_each(check_peer)?;
        self.command(Command::SetPeers(peers)).await
    }

    /// Removes a peer: its session ends with a Cease (peer de-configured) and its routes
    /// are withdrawn.
    pub async fn remove_peer(&self, address: Ipv4Addr) -> Result<(), SpeakerError> {
        self.command(Command::RemovePeer(address)).await
    }

    /// Ends every session with a Cease (administrative shutdown) and stops listening.
    pub async fn shutdown(self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(done_tx)).await.is_ok() {
            let _ = timeout(2 * STOP_TIMEOUT, done_rx).await;
        }
        self.task.abort();
    }

    async fn command(&self, command: Command) -> Result<(), SpeakerError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| SpeakerError::Stopped)
    }
}

/// One peer's running session.
struct PeerSession {
    peer: PeerConfig,
    inputs: mpsc::Sender<SessionInput>,
    task: JoinHandle<()>,
}

/// The speaker's task: the listener and the sessions.
struct Runner {
    config: SpeakerConfig,
    sessions: HashMap<Ipv4Addr, PeerSession>,
    prefixes: watch::Receiver<BTreeSet<Ipv4Prefix>>,
    events: mpsc::Sender<RouteEvent>,
}

impl Runner {
    async fn run(mut self, listener: TcpListener, mut commands: mpsc::Receiver<Command>) {
        for peer in std::mem::take(&mut self.config.peers) {
            self.start_session(peer);
        }
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, from)) => self.route_incoming(stream, from),
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "BGP listener accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                command = commands.recv() => match command {
                    Some(Command::AddPeer(peer)) => self.add_peer(peer).await,
                    Some(Command::RemovePeer(address)) => {
                        self.stop_session(address, subcode::PEER_DECONFIGURED).await;
                    }
                    Some(Command::SetPeers(peers)) => {
                        let wanted: HashMap<Ipv4Addr, PeerConfig> =
                            peers.into_iter().map(|p| (p.address, p)).collect();
                        let gone: Vec<Ipv4Addr> = self
                            .sessions
                            .keys()
                            .filter(|address| !wanted.contains_key(address))
                            .copied()
                            .collect();
                        for address in gone {
                            self.stop_session(address, subcode::PEER_DECONFIGURED).await;
                        }
                        for peer in wanted.into_values() {
                            self.add_peer(peer).await;
                        }
                    }
                    Some(Command::Shutdown(done)) => {
                        self.stop_all().await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.stop_all().await;
                        return;
                    }
                },
            }
        }
    }

    fn route_incoming(&mut self, stream: tokio::net::TcpStream, from: SocketAddr) {
        let address = match from.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        let session = address.and_then(|a| self.sessions.get(&a));
        match session {
            Some(session) => {
                if session
                    .inputs
                    .try_send(SessionInput::Incoming(stream))
                    .is_err()
                {
                    tracing::debug!(%from, "BGP peer connects too often; connection dropped");
                }
            }
            None => tracing::warn!(%from, "BGP connection from an unconfigured address refused"),
        }
    }

    async fn add_peer(&mut self, peer: PeerConfig) {
        if self.sessions.get(&peer.address).map(|s| s.peer) == Some(peer) {
            return;
        }
        self.stop_session(peer.address, subcode::ADMINISTRATIVE_SHUTDOWN)
            .await;
        self.start_session(peer);
    }

    fn start_session(&mut self, peer: PeerConfig) {
        let params = SessionParams {
            fsm: FsmConfig {
                local_as: self.config.local_as,
                remote_as: peer.remote_as,
                router_id: self.config.router_id,
                hold_time: self.config.hold_time,
                connect_retry: self.config.connect_retry,
                connect_retry_max: self.config.connect_retry_max,
            },
            peer: SocketAddr::new(IpAddr::V4(peer.address), peer.port.unwrap_or(BGP_PORT)),
            source: Some(self.config.listen.ip()).filter(|ip| !ip.is_unspecified()),
            next_hop: self.config.router_id,
        };
        let (inputs, inputs_rx) = mpsc::channel(INCOMING_QUEUE);
        let span = tracing::info_span!("bgp", local = %self.config.router_id);
        let task = tokio::spawn(
            session::run(
                params,
                peer.address,
                inputs_rx,
                self.prefixes.clone(),
                self.events.clone(),
            )
            .instrument(span),
        );
        tracing::info!(peer = %peer.address, remote_as = peer.remote_as, "BGP peer added");
        self.sessions
            .insert(peer.address, PeerSession { peer, inputs, task });
    }

    async fn stop_session(&mut self, address: Ipv4Addr, cease_subcode: u8) {
        if let Some(session) = self.sessions.remove(&address) {
            stop(session, cease_subcode).await;
        }
    }

    async fn stop_all(&mut self) {
        let sessions: Vec<PeerSession> = self.sessions.drain().map(|(_, s)| s).collect();
        futures::future::join_all(
            sessions
                .into_iter()
                .map(|s| stop(s, subcode::ADMINISTRATIVE_SHUTDOWN)),
        )
        .await;
    }
}

/// Tells a session to stop and waits (bounded) for it to say goodbye.
async fn stop(session: PeerSession, cease_subcode: u8) {
    let PeerSession {
        inputs, mut task, ..
    } = session;
    let _ = inputs.send(SessionInput::Stop { cease_subcode }).await;
    if timeout(STOP_TIMEOUT, &mut task).await.is_err() {
        task.abort();
    }
}
