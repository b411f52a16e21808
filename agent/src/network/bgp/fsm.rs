//! The per-peer BGP finite state machine (RFC 4271 §8) as plain data: [`Fsm::handle`] takes
//! one [`Event`] and returns the [`Action`]s the I/O shell ([`super::session`]) must carry
//! out, in order. Also the connection collision rule (§6.8) and the connect retry backoff.
//!
//! Owns the decisions: which state follows, when to send OPEN, KEEPALIVE or NOTIFICATION,
//! how hold time is negotiated, which timers run. It must not do I/O or read the clock;
//! timers are durations the shell arms, and their expiry comes back as events.
use std::{net::Ipv4Addr, time::Duration};

use super::{
    error::{code, subcode, MessageError},
    message::{Capability, DecodeContext, Message, Notification, Open, AFI_IPV4, SAFI_UNICAST},
    update::Update,
};

/// The hold timer while waiting for the peer's OPEN (RFC 4271 §8.2.2 suggests 4 minutes).
pub const OPEN_HOLD_TIME: Duration = Duration::from_secs(240);

/// The session states of RFC 4271 §8.2.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Refusing connections (stopped), or waiting out the connect retry backoff.
    Idle,
    /// An outgoing connection attempt is in progress.
    Connect,
    /// The last attempt failed; waiting for the retry timer or an incoming connection.
    Active,
    /// Our OPEN is sent; waiting for the peer's.
    OpenSent,
    /// OPENs exchanged; waiting for the peer's KEEPALIVE.
    OpenConfirm,
    /// Exchanging UPDATEs.
    Established,
}

/// What this speaker wants of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsmConfig {
    /// Our AS.
    pub local_as: u32,
    /// The AS the peer must announce.
    pub remote_as: u32,
    /// Our BGP Identifier.
    pub router_id: Ipv4Addr,
    /// The hold time we propose, seconds: 0 (no keepalives) or at least 3.
    pub hold_time: u16,
    /// First connect retry interval; it doubles after each failure up to `connect_retry_max`
    /// and starts over once a session is established.
    pub connect_retry: Duration,
    /// Longest connect retry interval.
    pub connect_retry_max: Duration,
}

impl FsmConfig {
    /// Whether the peer is in our AS.
    pub fn is_internal(&self) -> bool {
        self.local_as == self.remote_as
    }

    /// The OPEN we send: IPv4 unicast (RFC 4760), route refresh and 4-octet AS capabilities.
    pub fn open(&self) -> Open {
        Open {
            asn: self.local_as,
            hold_time: self.hold_time,
            router_id: self.router_id,
            capabilities: vec![
                Capability::Multiprotocol {
                    afi: AFI_IPV4,
                    safi: SAFI_UNICAST,
                },
                Capability::RouteRefresh,
                Capability::FourOctetAs(self.local_as),
            ],
        }
    }
}

/// What the two OPENs settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The smaller of the two hold times, seconds; 0 means no hold timer and no keepalives.
    pub hold_time: u16,
    /// Both sides speak 4-octet AS numbers.
    pub four_octet_as: bool,
    /// The peer accepts ROUTE-REFRESH.
    pub route_refresh: bool,
    /// The peer's BGP Identifier.
    pub peer_router_id: Ipv4Addr,
}

impl Negotiated {
    /// How received messages decode on this session.
    pub fn decode_context(&self) -> DecodeContext {
        DecodeContext {
            four_octet_as: self.four_octet_as,
        }
    }

    /// The hold timer, when one runs.
    pub fn hold(&self) -> Option<Duration> {
        (self.hold_time > 0).then(|| Duration::from_secs(u64::from(self.hold_time)))
    }

    /// The keepalive interval: a third of the hold time (RFC 4271 §10), when one runs.
    pub fn keepalive(&self) -> Option<Duration> {
        self.hold().map(|hold| hold / 3)
    }
}

/// Which side opened a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionOrigin {
    /// We connected to the peer.
    Local,
    /// The peer connected to us.
    Remote,
}

/// Which connection survives a collision (RFC 4271 §6.8): the one opened by the side with
/// the higher BGP Identifier.
pub fn collision_survivor(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> ConnectionOrigin {
    if u32::from(local_id) < u32::from(remote_id) {
        ConnectionOrigin::Remote
    } else {
        ConnectionOrigin::Local
    }
}

/// The FSM's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Next connection attempt.
    ConnectRetry,
    /// Peer silence limit.
    Hold,
    /// Next KEEPALIVE to send.
    Keepalive,
}

/// Something that happened to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Begin connecting and accepting (ManualStart with passive accept).
    Start,
    /// Close the session for good with a Cease of this subcode.
    Stop {
        /// Cease subcode: administrative shutdown, peer de-configured, …
        cease_subcode: u8,
    },
    /// A timer ran out.
    TimerExpired(Timer),
    /// A TCP connection to the peer is up (ours or theirs) and is now the session's.
    TcpConnected,
    /// The outgoing attempt failed.
    TcpConnectFailed,
    /// The session's connection closed or failed.
    TcpClosed,
    /// The shell switched to a new connection on which our OPEN was already sent (the
    /// winner of a collision); the peer's OPEN on it follows as the next event.
    SwitchedConnection,
    /// A message arrived.
    Received(Message),
    /// A message arrived that does not decode.
    Malformed(MessageError),
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Abandon any outgoing attempt and start a new one.
    Connect,
    /// Send a message on the session's connection.
    Send(Message),
    /// Close the session's connection and abandon any outgoing attempt.
    CloseConnection,
    /// Arm a timer (re-arming it if running).
    StartTimer(Timer, Duration),
    /// Disarm a timer.
    StopTimer(Timer),
    /// The session is established: advertise our routes.
    SessionUp(Negotiated),
    /// The established session ended: withdraw everything learned from the peer.
    SessionDown,
    /// Apply the peer's UPDATE.
    ApplyUpdate(Update),
    /// The peer asked for our routes again (ROUTE-REFRESH).
    ResendRoutes,
}

/// The state machine of one peer.
#[derive(Debug, Clone)]
pub struct Fsm {
    config: FsmConfig,
    state: State,
    started: bool,
    next_retry: Duration,
    negotiated: Option<Negotiated>,
}

impl Fsm {
    /// A stopped FSM in Idle.
    pub fn new(config: FsmConfig) -> Self {
        let next_retry = config.connect_retry;
        Self {
            config,
            state: State::Idle,
            started: false,
            next_retry,
            negotiated: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// What the OPENs settled, from OpenConfirm on.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// The configuration.
    pub fn config(&self) -> &FsmConfig {
        &self.config
    }

    /// How messages decode on the current connection.
    pub fn decode_context(&self) -> DecodeContext {
        self.negotiated
            .map(|n| n.decode_context())
            .unwrap_or_default()
    }

    /// Feeds one event; returns what to do, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        use State::*;
        match (self.state, event) {
            (_, Event::Stop { cease_subcode }) => self.stop(cease_subcode),
            (Idle, Event::Start) => {
                self.started = true;
                self.next_retry = self.config.connect_retry;
                self.connect()
            }
            (Idle, Event::TimerExpired(Timer::ConnectRetry)) if self.started => self.connect(),
            (Connect | Active, Event::TimerExpired(Timer::ConnectRetry)) => self.connect(),
            (Connect, Event::TcpConnectFailed) => {
                self.state = Active;
                Vec::new()
            }
            (Idle, Event::TcpConnected) if !self.started => vec![Action::CloseConnection],
            (Idle | Connect | Active, Event::TcpConnected) => {
                self.state = OpenSent;
                vec![
                    Action::StopTimer(Timer::ConnectRetry),
                    Action::Send(Message::Open(self.config.open())),
                    Action::StartTimer(Timer::Hold, OPEN_HOLD_TIME),
                ]
            }
            (Idle | Connect | Active | OpenSent | OpenConfirm, Event::SwitchedConnection)
                if self.started =>
            {
                self.state = OpenSent;
                self.negotiated = None;
                vec![
                    Action::StopTimer(Timer::ConnectRetry),
                    Action::StopTimer(Timer::Keepalive),
                    Action::StartTimer(Timer::Hold, OPEN_HOLD_TIME),
                ]
            }
            (OpenSent, Event::Received(Message::Open(open))) => self.open_received(&open),
            (OpenConfirm, Event::Received(Message::Keepalive)) => {
                let Some(negotiated) = self.negotiated else {
                    return self.fail(fsm_error(subcode::UNEXPECTED_IN_OPEN_CONFIRM));
                };
                self.state = Established;
                self.next_retry = self.config.connect_retry;
                let mut actions = self.restart_hold();
                actions.push(Action::SessionUp(negotiated));
                actions
            }
            (Established, Event::Received(Message::Keepalive)) => self.restart_hold(),
            (Established, Event::Received(Message::Update(update))) => {
                if let Err(error) = self.check_update(&update) {
                    return self.fail(error.notification());
                }
                let mut actions = self.restart_hold();
                actions.push(Action::ApplyUpdate(update));
                actions
            }
            (Established, Event::Received(Message::RouteRefresh(refresh))) => {
                let mut actions = self.restart_hold();
                if refresh.afi == AFI_IPV4 && refresh.safi == SAFI_UNICAST {
                    actions.push(Action::ResendRoutes);
                }
                actions
            }
            (OpenSent | OpenConfirm | Established, Event::Received(Message::Notification(_))) => {
                self.reset(false)
            }
            (OpenSent, Event::Received(_)) => {
                self.fail(fsm_error(subcode::UNEXPECTED_IN_OPEN_SENT))
            }
            (OpenConfirm, Event::Received(_)) => {
                self.fail(fsm_error(subcode::UNEXPECTED_IN_OPEN_CONFIRM))
            }
            (Established, Event::Received(_)) => {
                self.fail(fsm_error(subcode::UNEXPECTED_IN_ESTABLISHED))
            }
            (OpenSent | OpenConfirm | Established, Event::Malformed(error)) => {
                self.fail(error.notification())
            }
            (OpenSent | OpenConfirm | Established, Event::TimerExpired(Timer::Hold)) => {
                self.fail(Notification {
                    code: code::HOLD_TIMER_EXPIRED,
                    subcode: 0,
                    data: Vec::new(),
                })
            }
            (OpenConfirm | Established, Event::TimerExpired(Timer::Keepalive)) => {
                let mut actions = vec![Action::Send(Message::Keepalive)];
                if let Some(keepalive) = self.negotiated.and_then(|n| n.keepalive()) {
                    actions.push(Action::StartTimer(Timer::Keepalive, keepalive));
                }
                actions
            }
            // RFC 4271: a connection lost in OpenSent goes back to Active, listening.
            (OpenSent, Event::TcpClosed) => {
                self.state = Active;
                let retry = self.backoff();
                vec![
                    Action::CloseConnection,
                    Action::StopTimer(Timer::Hold),
                    Action::StartTimer(Timer::ConnectRetry, retry),
                ]
            }
            (OpenConfirm | Established, Event::TcpClosed) => self.reset(false),
            // Anything else cannot happen in that state (no connection, timer not armed) or
            // needs nothing done.
            _ => Vec::new(),
        }
    }

    fn connect(&mut self) -> Vec<Action> {
        self.state = State::Connect;
        let retry = self.backoff();
        vec![
            Action::Connect,
            Action::StartTimer(Timer::ConnectRetry, retry),
        ]
    }

    /// The current retry interval; the next one is twice as long, up to the maximum.
    fn backoff(&mut self) -> Duration {
        let current = self.next_retry;
        self.next_retry = (current * 2).min(self.config.connect_retry_max);
        current
    }

    fn open_received(&mut self, open: &Open) -> Vec<Action> {
        if open.asn != self.config.remote_as {
            return self.fail(
                MessageError::BadPeerAs {
                    received: open.asn,
                    expected: self.config.remote_as,
                }
                .notification(),
            );
        }
        // RFC 6286: identifiers must differ within an AS.
        if self.config.is_internal() && open.router_id == self.config.router_id {
            return self.fail(
                MessageError::BadBgpIdentifier {
                    identifier: open.router_id,
                }
                .notification(),
            );
        }
        let negotiated = Negotiated {
            hold_time: self.config.hold_time.min(open.hold_time),
            four_octet_as: open.four_octet_as().is_some(),
            route_refresh: open.supports_route_refresh(),
            peer_router_id: open.router_id,
        };
        self.negotiated = Some(negotiated);
        self.state = State::OpenConfirm;
        let mut actions = vec![Action::Send(Message::Keepalive)];
        match (negotiated.hold(), negotiated.keepalive()) {
            (Some(hold), Some(keepalive)) => {
                actions.push(Action::StartTimer(Timer::Keepalive, keepalive));
                actions.push(Action::StartTimer(Timer::Hold, hold));
            }
            _ => actions.push(Action::StopTimer(Timer::Hold)),
        }
        actions
    }

    /// The UPDATE checks that need to know the peer (RFC 4271 §6.3).
    fn check_update(&self, update: &Update) -> Result<(), MessageError> {
        let external = !self.config.is_internal();
        if external
            && !update.nlri.is_empty()
            && update.attributes.first_as() != Some(self.config.remote_as)
        {
            return Err(MessageError::MalformedAsPath);
        }
        Ok(())
    }

    fn restart_hold(&self) -> Vec<Action> {
        self.negotiated
            .and_then(|n| n.hold())
            .map(|hold| vec![Action::StartTimer(Timer::Hold, hold)])
            .unwrap_or_default()
    }

    /// Sends `notification`, closes the connection and waits out the backoff in Idle.
    fn fail(&mut self, notification: Notification) -> Vec<Action> {
        let mut actions = vec![Action::Send(Message::Notification(notification))];
        actions.extend(self.reset(false));
        actions
    }

    /// Closes the connection; back to Idle, to retry after the backoff unless `stopped`.
    fn reset(&mut self, stopped: bool) -> Vec<Action> {
        let was_established = self.state == State::Established;
        self.state = State::Idle;
        self.negotiated = None;
        let mut actions = vec![
            Action::CloseConnection,
            Action::StopTimer(Timer::Hold),
            Action::StopTimer(Timer::Keepalive),
        ];
        if was_established {
            actions.push(Action::SessionDown);
        }
        if stopped {
            self.started = false;
            actions.push(Action::StopTimer(Timer::ConnectRetry));
        } else {
            let retry = self.backoff();
            actions.push(Action::StartTimer(Timer::ConnectRetry, retry));
        }
        actions
    }

    fn stop(&mut self, cease_subcode: u8) -> Vec<Action> {
        let mut actions = Vec::new();
        if matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        ) {
            actions.push(Action::Send(Message::Notification(Notification {
                code: code::CEASE,
                subcode: cease_subcode,
                data: Vec::new(),
            })));
        }
        actions.extend(self.reset(true));
        actions
    }
}

fn fsm_error(subcode: u8) -> Notification {
    Notification {
        code: code::FSM,
        subcode,
        data: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::bgp::{
        message::RouteRefresh,
        prefix::Ipv4Prefix,
        update::{AsSegment, PathAttributes, SegmentKind},
    };

    const SEC: Duration = Duration::from_secs(1);

    fn config(remote_as: u32) -> FsmConfig {
        FsmConfig {
            local_as: 64512,
            remote_as,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            hold_time: 9,
            connect_retry: SEC,
            connect_retry_max: 4 * SEC,
        }
    }

    fn peer_open(asn: u32, hold_time: u16) -> Message {
        Message::Open(Open {
            asn,
            hold_time,
            router_id: Ipv4Addr::new(10, 0, 0, 2),
            capabilities: vec![Capability::FourOctetAs(asn), Capability::RouteRefresh],
        })
    }

    /// An FSM that went through Start, a connection and the OPEN exchange.
    fn established(remote_as: u32, peer_hold: u16) -> Fsm {
        let mut fsm = Fsm::new(config(remote_as));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpConnected);
        fsm.handle(Event::Received(peer_open(remote_as, peer_hold)));
        let actions = fsm.handle(Event::Received(Message::Keepalive));
        assert_eq!(fsm.state(), State::Established, "{actions:?}");
        fsm
    }

    fn notification(actions: &[Action]) -> Option<(u8, u8)> {
        actions.iter().find_map(|a| match a {
            Action::Send(Message::Notification(n)) => Some((n.code, n.subcode)),
            _ => None,
        })
    }

    #[test]
    fn connect_retry_backs_off_up_to_the_maximum() {
        let mut fsm = Fsm::new(config(64512));
        assert_eq!(
            fsm.handle(Event::Start),
            [
                Action::Connect,
                Action::StartTimer(Timer::ConnectRetry, SEC)
            ]
        );
        assert_eq!(fsm.state(), State::Connect);
        assert_eq!(fsm.handle(Event::TcpConnectFailed), []);
        assert_eq!(fsm.state(), State::Active);
        let mut intervals = Vec::new();
        for _ in 0..4 {
            let actions = fsm.handle(Event::TimerExpired(Timer::ConnectRetry));
            assert_eq!(actions[0], Action::Connect);
            if let Some(Action::StartTimer(Timer::ConnectRetry, d)) = actions.get(1) {
                intervals.push(d.as_secs());
            }
            fsm.handle(Event::TcpConnectFailed);
        }
        assert_eq!(intervals, [2, 4, 4, 4]);
    }

    #[test]
    fn open_exchange_negotiates_the_smaller_hold_time() {
        let mut fsm = Fsm::new(config(64512));
        fsm.handle(Event::Start);
        let actions = fsm.handle(Event::TcpConnected);
        assert_eq!(fsm.state(), State::OpenSent);
        assert_eq!(
            actions[1],
            Action::Send(Message::Open(config(64512).open()))
        );
        assert_eq!(actions[2], Action::StartTimer(Timer::Hold, OPEN_HOLD_TIME));
        let actions = fsm.handle(Event::Received(peer_open(64512, 30)));
        assert_eq!(fsm.state(), State::OpenConfirm);
        assert_eq!(
            actions,
            [
                Action::Send(Message::Keepalive),
                Action::StartTimer(Timer::Keepalive, 3 * SEC),
                Action::StartTimer(Timer::Hold, 9 * SEC),
            ]
        );
        let actions = fsm.handle(Event::Received(Message::Keepalive));
        let negotiated = Negotiated {
            hold_time: 9,
            four_octet_as: true,
            route_refresh: true,
            peer_router_id: Ipv4Addr::new(10, 0, 0, 2),
        };
        assert_eq!(
            actions,
            [
                Action::StartTimer(Timer::Hold, 9 * SEC),
                Action::SessionUp(negotiated)
            ]
        );
        // A peer that proposes 0 turns hold timer and keepalives off; 3 is the smallest.
        let mut fsm = Fsm::new(config(64512));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpConnected);
        let actions = fsm.handle(Event::Received(peer_open(64512, 0)));
        assert_eq!(
            actions,
            [
                Action::Send(Message::Keepalive),
                Action::StopTimer(Timer::Hold)
            ]
        );
        assert_eq!(fsm.negotiated().map(|n| n.hold_time), Some(0));
        let fsm = established(64512, 3);
        assert_eq!(fsm.negotiated().and_then(|n| n.keepalive()), Some(SEC));
    }

    #[test]
    fn keepalives_and_updates_restart_the_hold_timer() {
        let mut fsm = established(64512, 90);
        assert_eq!(
            fsm.handle(Event::TimerExpired(Timer::Keepalive)),
            [
                Action::Send(Message::Keepalive),
                Action::StartTimer(Timer::Keepalive, 3 * SEC)
            ]
        );
        assert_eq!(
            fsm.handle(Event::Received(Message::Keepalive)),
            [Action::StartTimer(Timer::Hold, 9 * SEC)]
        );
        let update = Update::default();
        assert_eq!(
            fsm.handle(Event::Received(Message::Update(update.clone()))),
            [
                Action::StartTimer(Timer::Hold, 9 * SEC),
                Action::ApplyUpdate(update)
            ]
        );
        let actions = fsm.handle(Event::Received(Message::RouteRefresh(RouteRefresh {
            afi: 1,
            safi: 1,
        })));
        assert_eq!(actions.last(), Some(&Action::ResendRoutes));
    }

    #[test]
    fn hold_timer_expiry_notifies_and_resets() {
        let mut fsm = established(64512, 90);
        let actions = fsm.handle(Event::TimerExpired(Timer::Hold));
        assert_eq!(notification(&actions), Some((code::HOLD_TIMER_EXPIRED, 0)));
        assert!(actions.contains(&Action::CloseConnection));
        assert!(actions.contains(&Action::SessionDown));
        assert!(actions.contains(&Action::StartTimer(Timer::ConnectRetry, SEC)));
        assert_eq!(fsm.state(), State::Idle);
        // It comes back by itself after the backoff.
        assert_eq!(
            fsm.handle(Event::TimerExpired(Timer::ConnectRetry))[0],
            Action::Connect
        );
        // In OpenSent too, without a SessionDown (nothing was learned).
        let mut fsm = Fsm::new(config(64512));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpConnected);
        let actions = fsm.handle(Event::TimerExpired(Timer::Hold));
        assert_eq!(notification(&actions), Some((code::HOLD_TIMER_EXPIRED, 0)));
        assert!(!actions.contains(&Action::SessionDown));
    }

    #[test]
    fn bad_opens_are_refused_with_their_subcodes() {
        let mut fsm = Fsm::new(config(65001));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpConnected);
        let actions = fsm.handle(Event::Received(peer_open(65002, 90)));
        assert_eq!(
            notification(&actions),
            Some((code::OPEN_MESSAGE, subcode::BAD_PEER_AS))
        );
        assert_eq!(fsm.state(), State::Idle);

        let mut fsm = Fsm::new(config(64512));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpConnected);
        let mut open = config(64512).open();
        open.router_id = config(64512).router_id;
        let actions = fsm.handle(Event::Received(Message::Open(open)));
        assert_eq!(
            notification(&actions),
            Some((code::OPEN_MESSAGE, subcode::BAD_BGP_IDENTIFIER))
        );

        // A decoding fault is answered with its own NOTIFICATION.
        let mut fsm = Fsm::new(config(64512));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpConnected);
        let actions = fsm.handle(Event::Malformed(MessageError::UnacceptableHoldTime {
            hold_time: 2,
        }));
        assert_eq!(
            notification(&actions),
            Some((code::OPEN_MESSAGE, subcode::UNACCEPTABLE_HOLD_TIME))
        );
    }

    #[test]
    fn messages_out_of_place_are_fsm_errors() {
        let mut fsm = Fsm::new(config(64512));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpConnected);
        let actions = fsm.handle(Event::Received(Message::Keepalive));
        assert_eq!(
            notification(&actions),
            Some((code::FSM, subcode::UNEXPECTED_IN_OPEN_SENT))
        );

        let mut fsm = Fsm::new(config(64512));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpConnected);
        fsm.handle(Event::Received(peer_open(64512, 90)));
        let actions = fsm.handle(Event::Received(Message::Update(Update::default())));
        assert_eq!(
            notification(&actions),
            Some((code::FSM, subcode::UNEXPECTED_IN_OPEN_CONFIRM))
        );

        let mut fsm = established(64512, 90);
        let actions = fsm.handle(Event::Received(peer_open(64512, 90)));
        assert_eq!(
            notification(&actions),
            Some((code::FSM, subcode::UNEXPECTED_IN_ESTABLISHED))
        );
        assert!(actions.contains(&Action::SessionDown));
    }

    #[test]
    fn malformed_update_in_established_resets_and_withdraws() {
        let mut fsm = established(64512, 90);
        let actions = fsm.handle(Event::Malformed(MessageError::InvalidNetworkField));
        assert_eq!(
            notification(&actions),
            Some((code::UPDATE_MESSAGE, subcode::INVALID_NETWORK_FIELD))
        );
        assert!(actions.contains(&Action::SessionDown));
        assert_eq!(fsm.state(), State::Idle);
    }

    #[test]
    fn external_updates_must_start_with_the_peer_as() {
        let update = |first: u32| Update {
            attributes: PathAttributes {
                as_path: Some(vec![AsSegment {
                    kind: SegmentKind::Sequence,
                    asns: vec![first, 65100],
                }]),
                ..PathAttributes::default()
            },
            nlri: vec![
                Ipv4Prefix::new(Ipv4Addr::new(192, 0, 2, 0), 24).unwrap_or_else(|e| panic!("{e}"))
            ],
            ..Update::default()
        };
        let mut fsm = established(65001, 90);
        let actions = fsm.handle(Event::Received(Message::Update(update(65001))));
        assert!(matches!(actions.last(), Some(Action::ApplyUpdate(_))));
        let actions = fsm.handle(Event::Received(Message::Update(update(65002))));
        assert_eq!(
            notification(&actions),
            Some((code::UPDATE_MESSAGE, subcode::MALFORMED_AS_PATH))
        );
    }

    #[test]
    fn stop_ceases_and_stays_down() {
        let mut fsm = established(64512, 90);
        let actions = fsm.handle(Event::Stop {
            cease_subcode: subcode::ADMINISTRATIVE_SHUTDOWN,
        });
        assert_eq!(
            notification(&actions),
            Some((code::CEASE, subcode::ADMINISTRATIVE_SHUTDOWN))
        );
        assert!(actions.contains(&Action::SessionDown));
        assert!(actions.contains(&Action::StopTimer(Timer::ConnectRetry)));
        assert_eq!(fsm.handle(Event::TimerExpired(Timer::ConnectRetry)), []);
        assert_eq!(fsm.handle(Event::TcpConnected), [Action::CloseConnection]);
        assert_eq!(fsm.state(), State::Idle);
    }

    #[test]
    fn lost_connections_fall_back_and_retry() {
        let mut fsm = Fsm::new(config(64512));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpConnected);
        let actions = fsm.handle(Event::TcpClosed);
        assert_eq!(fsm.state(), State::Active);
        assert!(actions.contains(&Action::CloseConnection));
        let mut fsm = established(64512, 90);
        let actions = fsm.handle(Event::TcpClosed);
        assert_eq!(fsm.state(), State::Idle);
        assert!(actions.contains(&Action::SessionDown));
        assert_eq!(notification(&actions), None);
        // A peer's NOTIFICATION is not answered.
        let mut fsm = established(64512, 90);
        let actions = fsm.handle(Event::Received(Message::Notification(Notification {
            code: code::CEASE,
            subcode: 2,
            data: Vec::new(),
        })));
        assert_eq!(notification(&actions), None);
        assert!(actions.contains(&Action::SessionDown));
    }

    #[test]
    fn collisions_keep_the_connection_of_the_higher_identifier() {
        let low = Ipv4Addr::new(10, 0, 0, 1);
        let high = Ipv4Addr::new(10, 0, 0, 2);
        assert_eq!(collision_survivor(low, high), ConnectionOrigin::Remote);
        assert_eq!(collision_survivor(high, low), ConnectionOrigin::Local);
        // Both ends pick the same TCP connection: the one `high` opened.
        let at_low = collision_survivor(low, high) == ConnectionOrigin::Remote;
        let at_high = collision_survivor(high, low) == ConnectionOrigin::Local;
        assert!(at_low && at_high);
        // Switching to the winner mid-handshake waits for the peer's OPEN on it.
        let mut fsm = Fsm::new(config(64512));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpConnected);
        fsm.handle(Event::Received(peer_open(64512, 90)));
        fsm.handle(Event::SwitchedConnection);
        assert_eq!(fsm.state(), State::OpenSent);
        fsm.handle(Event::Received(peer_open(64512, 90)));
        assert_eq!(fsm.state(), State::OpenConfirm);
    }
}
