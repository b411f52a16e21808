//! The I/O shell around one peer's [`Fsm`]: TCP connections (ours and the peer's), the
//! timers, collision handling (RFC 4271 §6.8) and the peer's routes in and ours out.
//!
//! Owns the sockets and the clock of one peer; every decision is the FSM's or the RIB's.
//! Received bytes are framed by a reader task that never buffers more than two messages, and
//! every write and connect is bounded in time. It must not touch the kernel's routes: learned
//! routes leave as [`RouteEvent`]s.
use std::{
    collections::{BTreeSet, VecDeque},
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpSocket, TcpStream,
    },
    sync::{mpsc, watch},
    task::JoinHandle,
    time::{sleep_until, timeout, Instant},
};

use super::{
    error::{code, subcode, MessageError},
    fsm::{collision_survivor, Action, ConnectionOrigin, Event, Fsm, FsmConfig, State, Timer},
    message::{frame_length, DecodeContext, Message, Notification, MAX_MESSAGE_LEN},
    prefix::Ipv4Prefix,
    rib::{export_attributes, updates_for, AdjRibIn, AdjRibOut, ImportPolicy, RouteChange},
    speaker::RouteEvent,
};

/// Longest an outgoing connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one message may take to leave; a peer that stops reading is a dead peer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a second, colliding connection may take to send its OPEN.
const COLLISION_OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Received messages queued per session before the readers wait.
const FRAME_QUEUE: usize = 64;

/// One peer's session settings.
#[derive(Debug, Clone)]
pub(crate) struct SessionParams {
    /// The state machine's settings.
    pub fsm: FsmConfig,
    /// Where the peer listens.
    pub peer: SocketAddr,
    /// The address outgoing connections come from, when set.
    pub source: Option<IpAddr>,
    /// NEXT_HOP of our prefixes.
    pub next_hop: Ipv4Addr,
}

/// What the speaker tells a session.
#[derive(Debug)]
pub(crate) enum SessionInput {
    /// The peer connected to our listener.
    Incoming(TcpStream),
    /// End the session with a Cease of this subcode.
    Stop {
        /// Cease subcode.
        cease_subcode: u8,
    },
}

/// A connection to the peer: the write half, and the task reading the other half.
#[derive(Debug)]
struct Connection {
    id: u64,
    origin: ConnectionOrigin,
    writer: OwnedWriteHalf,
    reader: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Connection {
    async fn send(&mut self, message: &Message, context: DecodeContext) -> io::Result<()> {
        let wire = message
            .encode(context)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        timeout(WRITE_TIMEOUT, self.writer.write_all(&wire))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading"))?
    }
}

/// What a reader task saw.
#[derive(Debug)]
enum Received {
    /// One whole message, header included.
    Frame(Vec<u8>),
    /// A header fault; the reader stopped.
    Malformed(MessageError),
    /// The peer closed the connection or it failed; the reader stopped.
    Closed,
}

#[derive(Debug)]
struct FromReader {
    connection: u64,
    received: Received,
}

/// Splits the byte stream into messages.
async fn read_frames(connection: u64, mut read: OwnedReadHalf, to: mpsc::Sender<FromReader>) {
    let mut buf = Vec::with_capacity(2 * MAX_MESSAGE_LEN);
    let mut chunk = vec![0u8; MAX_MESSAGE_LEN];
    loop {
        // Take out every complete message, so less than one stays buffered.
        loop {
            let received = match frame_length(&buf) {
                Ok(None) => break,
                Ok(Some(len)) => Received::Frame(buf.drain(..len).collect()),
                Err(error) => Received::Malformed(error),
            };
            let stop = !matches!(received, Received::Frame(_));
            let sent = to
                .send(FromReader {
                    connection,
                    received,
                })
                .await;
            if stop || sent.is_err() {
                return;
            }
        }
        let received = match read.read(&mut chunk).await {
            Ok(0) | Err(_) => Received::Closed,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                continue;
            }
        };
        let _ = to
            .send(FromReader {
                connection,
                received,
            })
            .await;
        return;
    }
}

/// The running session of one peer.
struct Session {
    params: SessionParams,
    peer: Ipv4Addr,
    fsm: Fsm,
    connection: Option<Connection>,
    /// A second connection from the peer while ours is in OpenSent/OpenConfirm, waiting for
    /// its OPEN to settle the collision, and until when it may wait.
    candidate: Option<(Connection, Instant)>,
    attempt: Option<JoinHandle<io::Result<TcpStream>>>,
    connect_retry: Option<Instant>,
    hold: Option<Instant>,
    keepalive: Option<Instant>,
    next_connection_id: u64,
    reader_tx: mpsc::Sender<FromReader>,
    reader_rx: mpsc::Receiver<FromReader>,
    rib_in: AdjRibIn,
    rib_out: AdjRibOut,
    prefixes: watch::Receiver<BTreeSet<Ipv4Prefix>>,
    events: mpsc::Sender<RouteEvent>,
}

/// Runs one peer's session until told to stop (or until the speaker is gone).
pub(crate) async fn run(
    params: SessionParams,
    peer: Ipv4Addr,
    mut inputs: mpsc::Receiver<SessionInput>,
    prefixes: watch::Receiver<BTreeSet<Ipv4Prefix>>,
    events: mpsc::Sender<RouteEvent>,
) {
    let (reader_tx, reader_rx) = mpsc::channel(FRAME_QUEUE);
    let mut session = Session {
        fsm: Fsm::new(params.fsm.clone()),
        params,
        peer,
        connection: None,
        candidate: None,
        attempt: None,
        connect_retry: None,
        hold: None,
        keepalive: None,
        next_connection_id: 0,
        reader_tx,
        reader_rx,
        rib_in: AdjRibIn::default(),
        rib_out: AdjRibOut::default(),
        prefixes,
        events,
    };
    session.dispatch(Event::Start).await;
    loop {
        let established = session.fsm.state() == State::Established;
        let candidate_deadline = session.candidate.as_ref().map(|(_, deadline)| *deadline);
        tokio::select! {
            input = inputs.recv() => match input {
                Some(SessionInput::Incoming(stream)) => {
                    session.connected(stream, ConnectionOrigin::Remote).await;
                }
                Some(SessionInput::Stop { cease_subcode }) => {
                    session.dispatch(Event::Stop { cease_subcode }).await;
                    break;
                }
                None => {
                    let cease_subcode = subcode::ADMINISTRATIVE_SHUTDOWN;
                    session.dispatch(Event::Stop { cease_subcode }).await;
                    break;
                }
            },
            Some(from) = session.reader_rx.recv() => session.received(from).await,
            result = join_attempt(&mut session.attempt) => {
                session.attempt = None;
                match result {
                    Ok(stream) => session.connected(stream, ConnectionOrigin::Local).await,
                    Err(error) => {
                        let peer = session.peer;
                        tracing::debug!(%peer, %error, "BGP connection attempt failed");
                        session.dispatch(Event::TcpConnectFailed).await;
                    }
                }
            }
            () = sleep_opt(session.connect_retry) => {
                session.connect_retry = None;
                session.dispatch(Event::TimerExpired(Timer::ConnectRetry)).await;
            }
            () = sleep_opt(session.hold) => {
                session.hold = None;
                tracing::warn!(peer = %session.peer, "BGP hold timer expired");
                session.dispatch(Event::TimerExpired(Timer::Hold)).await;
            }
            () = sleep_opt(session.keepalive) => {
                session.keepalive = None;
                session.dispatch(Event::TimerExpired(Timer::Keepalive)).await;
            }
            () = sleep_opt(candidate_deadline) => {
                tracing::debug!(peer = %session.peer, "colliding connection sent no OPEN in time");
                session.candidate = None;
            }
            changed = session.prefixes.changed(), if established => {
                if changed.is_err() {
                    let cease_subcode = subcode::ADMINISTRATIVE_SHUTDOWN;
                    session.dispatch(Event::Stop { cease_subcode }).await;
                    break;
                }
                if session.advertise(false).await.is_err() {
                    session.dispatch(Event::TcpClosed).await;
                }
            }
        }
    }
}

/// Waits for the connection attempt, if one is running.
async fn join_attempt(
    attempt: &mut Option<JoinHandle<io::Result<TcpStream>>>,
) -> io::Result<TcpStream> {
    match attempt {
        Some(handle) => handle.await.unwrap_or_else(|e| Err(io::Error::other(e))),
        None => std::future::pending().await,
    }
}

/// Sleeps until the deadline, or forever without one.
async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn cease(subcode: u8) -> Message {
    Message::Notification(Notification {
        code: code::CEASE,
        subcode,
        data: Vec::new(),
    })
}

impl Session {
    fn connection_from(&mut self, stream: TcpStream, origin: ConnectionOrigin) -> Connection {
        self.next_connection_id += 1;
        let id = self.next_connection_id;
        // Messages are small and latency matters more than segment count.
        let _ = stream.set_nodelay(true);
        let (read, writer) = stream.into_split();
        let reader = tokio::spawn(read_frames(id, read, self.reader_tx.clone()));
        Connection {
            id,
            origin,
            writer,
            reader,
        }
    }

    /// A TCP connection to the peer is up: ours (the attempt finished) or theirs (accepted).
    /// Before an OPEN is sent it becomes the session's connection; during the OPEN exchange
    /// it is a collision, settled when its OPEN arrives; an established session refuses it.
    /// An accepted connection leaves our own attempt running: both ends may accept each
    /// other's connection at once, and the collision rule then picks the same one on both.
    async fn connected(&mut self, stream: TcpStream, origin: ConnectionOrigin) {
        match self.fsm.state() {
            State::Idle | State::Connect | State::Active => {
                let connection = self.connection_from(stream, origin);
                self.connection = Some(connection);
                self.dispatch(Event::TcpConnected).await;
            }
            State::OpenSent | State::OpenConfirm if self.candidate.is_none() => {
                tracing::debug!(peer = %self.peer, "connection collision: waiting for the OPEN");
                let mut candidate = self.connection_from(stream, origin);
                let open = Message::Open(self.params.fsm.open());
                if candidate
                    .send(&open, DecodeContext::default())
                    .await
                    .is_ok()
                {
                    self.candidate = Some((candidate, Instant::now() + COLLISION_OPEN_TIMEOUT));
                }
            }
            // RFC 4271 §6.8: a collision with an established session closes the new one.
            State::Established => {
                let mut refused = self.connection_from(stream, origin);
                let reason = cease(subcode::CONNECTION_COLLISION_RESOLUTION);
                let _ = refused.send(&reason, DecodeContext::default()).await;
            }
            State::OpenSent | State::OpenConfirm => {}
        }
    }

    async fn received(&mut self, from: FromReader) {
        if let Some((candidate, _)) = &self.candidate {
            if candidate.id == from.connection {
                self.candidate_received(from.received).await;
                return;
            }
        }
        let current = self.connection.as_ref().map(|c| c.id);
        if current != Some(from.connection) {
            return; // a connection already closed
        }
        let event = match from.received {
            Received::Frame(frame) => match Message::decode(&frame, self.fsm.decode_context()) {
                Ok(message) => Event::Received(message),
                Err(error) => Event::Malformed(error),
            },
            Received::Malformed(error) => Event::Malformed(error),
            Received::Closed => {
                self.connection = None;
                Event::TcpClosed
            }
        };
        if let Event::Malformed(error) = &event {
            tracing::warn!(peer = %self.peer, %error, "malformed BGP message");
        }
        if let Event::Received(Message::Notification(notification)) = &event {
            tracing::warn!(peer = %self.peer, %notification, "BGP peer sent a NOTIFICATION");
        }
        self.dispatch(event).await;
    }

    /// A message on the colliding connection: its OPEN settles which connection stays.
    async fn candidate_received(&mut self, received: Received) {
        let Some((mut candidate, _)) = self.candidate.take() else {
            return;
        };
        let open = match received {
            Received::Frame(frame) => match Message::decode(&frame, DecodeContext::default()) {
                Ok(Message::Open(open)) => open,
                _ => return,
            },
            _ => return,
        };
        let collision_lost = cease(subcode::CONNECTION_COLLISION_RESOLUTION);
        let local_id = self.params.fsm.router_id;
        let keep_candidate = match self.fsm.state() {
            State::Established => false,
            State::OpenSent | State::OpenConfirm => {
                let survivor = collision_survivor(local_id, open.router_id);
                let existing = self.connection.as_ref().map(|c| c.origin);
                survivor == candidate.origin && existing != Some(survivor)
            }
            State::Idle | State::Connect | State::Active => true,
        };
        if !keep_candidate {
            tracing::debug!(peer = %self.peer, "collision: keeping the existing connection");
            let _ = candidate
                .send(&collision_lost, DecodeContext::default())
                .await;
            return;
        }
        tracing::debug!(peer = %self.peer, "collision: switching to the peer's connection");
        if let Some(mut existing) = self.connection.take() {
            let _ = existing
                .send(&collision_lost, self.fsm.decode_context())
                .await;
        }
        if let Some(attempt) = self.attempt.take() {
            attempt.abort();
        }
        self.connection = Some(candidate);
        self.dispatch(Event::SwitchedConnection).await;
        self.dispatch(Event::Received(Message::Open(open))).await;
    }

    /// Feeds the FSM and carries out its actions, and those of any event they cause.
    async fn dispatch(&mut self, event: Event) {
        let mut events = VecDeque::from([event]);
        // Each action adds at most one event, and only a send failure does, which also
        // drops the connection; a handful of rounds is plenty.
        for _ in 0..8 {
            let Some(event) = events.pop_front() else {
                return;
            };
            let before = self.fsm.state();
            let actions = self.fsm.handle(event);
            if self.fsm.state() != before {
                let (peer, to) = (self.peer, self.fsm.state());
                tracing::debug!(%peer, from = ?before, ?to, "BGP state");
            }
            for action in actions {
                if let Some(follow_up) = self.act(action).await {
                    events.push_back(follow_up);
                }
            }
        }
    }

    /// Carries out one action; returns the event a failure causes.
    async fn act(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Connect => self.connect(),
            Action::Send(message) => return self.send(&message).await.err(),
            Action::CloseConnection => {
                self.connection = None;
                if let Some(attempt) = self.attempt.take() {
                    attempt.abort();
                }
            }
            Action::StartTimer(timer, after) => *self.timer(timer) = Some(Instant::now() + after),
            Action::StopTimer(timer) => *self.timer(timer) = None,
            Action::SessionUp(negotiated) => {
                tracing::info!(
                    peer = %self.peer,
                    peer_id = %negotiated.peer_router_id,
                    hold_time = negotiated.hold_time,
                    "BGP session established"
                );
                return self.advertise(true).await.err();
            }
            Action::SessionDown => {
                tracing::info!(peer = %self.peer, "BGP session down");
                self.rib_out.reset();
                let changes = self.rib_in.clear();
                self.report(changes).await;
            }
            Action::ApplyUpdate(update) => {
                let policy = ImportPolicy {
                    local_as: self.params.fsm.local_as,
                    router_id: self.params.fsm.router_id,
                    internal: self.params.fsm.is_internal(),
                };
                let changes = self.rib_in.apply(&update, &policy);
                self.report(changes).await;
            }
            Action::ResendRoutes => return self.advertise(true).await.err(),
        }
        None
    }

    fn timer(&mut self, timer: Timer) -> &mut Option<Instant> {
        match timer {
            Timer::ConnectRetry => &mut self.connect_retry,
            Timer::Hold => &mut self.hold,
            Timer::Keepalive => &mut self.keepalive,
        }
    }

    fn connect(&mut self) {
        if let Some(attempt) = self.attempt.take() {
            attempt.abort();
        }
        let peer = self.params.peer;
        let source = self.params.source;
        self.attempt = Some(tokio::spawn(async move {
            let attempt = async {
                let socket = match peer {
                    SocketAddr::V4(_) => TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => TcpSocket::new_v6()?,
                };
                if let Some(source) = source {
                    socket.bind(SocketAddr::new(source, 0))?;
                }
                socket.connect(peer).await
            };
            timeout(CONNECT_TIMEOUT, attempt).await.unwrap_or_else(|_| {
                Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
            })
        }));
    }

    /// Sends on the session's connection; a failure drops it and reads as its loss.
    async fn send(&mut self, message: &Message) -> Result<(), Event> {
        let context = self.fsm.decode_context();
        let Some(connection) = &mut self.connection else {
            return Ok(());
        };
        if let Err(error) = connection.send(message, context).await {
            tracing::debug!(peer = %self.peer, %error, "BGP send failed");
            self.connection = None;
            return Err(Event::TcpClosed);
        }
        Ok(())
    }

    /// Brings the peer's view of our prefixes up to date (all of them when `full`).
    async fn advertise(&mut self, full: bool) -> Result<(), Event> {
        if full {
            self.rib_out.reset();
        }
        let wanted = self.prefixes.borrow_and_update().clone();
        let advertisement = self.rib_out.advertise(&wanted);
        let attributes = export_attributes(
            self.params.fsm.local_as,
            self.params.fsm.is_internal(),
            self.params.next_hop,
        );
        for update in updates_for(&advertisement, &attributes) {
            self.send(&Message::Update(update)).await?;
        }
        Ok(())
    }

    async fn report(&mut self, changes: Vec<RouteChange>) {
        for change in changes {
            let event = match change {
                RouteChange::Learned { prefix, next_hop } => {
                    tracing::info!(peer = %self.peer, %prefix, %next_hop, "BGP route learned");
                    RouteEvent::Learned {
                        prefix,
                        next_hop,
                        peer: self.peer,
                    }
                }
                RouteChange::Withdrawn { prefix } => {
                    tracing::info!(peer = %self.peer, %prefix, "BGP route withdrawn");
                    RouteEvent::Withdrawn {
                        prefix,
                        peer: self.peer,
                    }
                }
            };
            // Nobody listening is no reason to stop speaking BGP.
            let _ = self.events.send(event).await;
        }
    }
}
