//! The three modes: pub/sub (subscribers, publishers, measured window, drain), idle, and
//! churn (subscribe / unsubscribe cycles).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::accounting::{SubscriberLedger, expected_deliveries, lost};
use crate::report::{self, IdleFigures, PubSubFigures, Report, TargetFigures};
use crate::wire::{self, Frame, Payload};
use crate::{Args, Target, WindowMode};

/// A client WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

// ------------------------------------------------------------------------------ clock

static BASE: OnceLock<Instant> = OnceLock::new();

/// Fixes the process-wide clock base; call once before anything reads the clock.
pub fn init_clock() {
    BASE.get_or_init(Instant::now);
}

/// Nanoseconds since the clock base (monotonic, one clock for senders and receivers).
pub fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn instant_at(ns: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(*BASE.get_or_init(Instant::now) + Duration::from_nanos(ns))
}

fn secs_ns(s: f64) -> u64 {
    (s * 1e9).round() as u64
}

// ------------------------------------------------------------------------------ errors

/// Error counters shared by every task.
#[derive(Default)]
pub struct Errors {
    /// Connections that could not be opened (TCP, upgrade, timeout).
    pub connect: AtomicU64,
    /// Connections that opened but whose subscribe was not confirmed.
    pub subscribe: AtomicU64,
    /// Connections the server closed (or that failed) before the end of the run.
    pub closed_early: AtomicU64,
    /// Frames that could not be sent.
    pub send: AtomicU64,
    /// Deliveries whose `data` was not a load generator payload.
    pub unparsed: AtomicU64,
    /// Deliveries on a channel the subscriber did not subscribe.
    pub wrong_channel: AtomicU64,
    /// `--rate 0` waits that timed out (no acknowledgement / delivery for 1 s).
    pub window_stalls: AtomicU64,
    /// `error` frames from the server, by code.
    pub server: Mutex<BTreeMap<String, u64>>,
    /// Close codes of connections closed early, by code.
    pub close_codes: Mutex<BTreeMap<String, u64>>,
    /// First few error messages, for the log.
    pub samples: Mutex<Vec<String>>,
}

impl Errors {
    fn sample(&self, what: String) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() < 10 {
            eprintln!("[loadgen] {what}");
            s.push(what);
        }
    }

    fn server_error(&self, code: &str) {
        let mut m = self.server.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(code.to_owned()).or_default() += 1;
        if m.values().sum::<u64>() <= 3 {
            drop(m);
            self.sample(format!("server error frame: {code}"));
        }
    }

    fn closed(&self, why: String) {
        self.closed_early.fetch_add(1, Ordering::Relaxed);
        let mut m = self.close_codes.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(why.clone()).or_default() += 1;
        drop(m);
        self.sample(format!("connection closed early: {why}"));
    }
}

// ------------------------------------------------------------------------------ connecting

fn client_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(16 * 1024)
}

/// How one connection presents itself: its source address and token.
#[derive(Clone, Default)]
struct Identity {
    /// Loopback source address to bind; `None` lets the kernel choose.
    source: Option<Ipv4Addr>,
    /// Query string (`?token=...`) appended to the target's URL.
    query: Option<Arc<str>>,
}

/// Hands each connection its source address and tenant token (`--sources`, `--tenants`).
struct Identities {
    sources: u8,
    /// One token query per tenant; empty when connections are anonymous.
    tokens: Vec<Arc<str>>,
}

impl Identities {
    fn new(args: &Args) -> Result<Self, String> {
        let mut tokens = Vec::with_capacity(args.tenants);
        if args.tenants > 0 {
            let secret = args.hs256_secret.as_deref().unwrap_or_default();
            let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
            let exp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                + 86_400;
            for t in 0..args.tenants {
                let claims = serde_json::json!({"sub": format!("t{t}-user"), "tenant": format!("t{t}"), "exp": exp});
                let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
                    .map_err(|e| format!("cannot sign a --tenants token: {e}"))?;
                tokens.push(Arc::from(format!("?token={token}")));
            }
        }
        Ok(Self {
            sources: args.sources,
            tokens,
        })
    }

    /// Connection `index`'s identity; publishers (`subscriber == false`) stay anonymous.
    fn of(&self, index: usize, subscriber: bool) -> Identity {
        let source = (self.sources > 1)
            .then(|| Ipv4Addr::new(127, 0, 0, 1 + (index % usize::from(self.sources)) as u8));
        let query = (subscriber && !self.tokens.is_empty())
            .then(|| self.tokens[index % self.tokens.len()].clone());
        Identity { source, query }
    }
}

/// Opens a WebSocket to `target`; returns it and the TCP + upgrade time.
async fn connect(
    target: &Target,
    cfg: WebSocketConfig,
    who: &Identity,
) -> Result<(Ws, Duration), String> {
    let t0 = Instant::now();
    let tcp = match who.source {
        None => TcpStream::connect(target.addr).await,
        Some(ip) => {
            async {
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::from((ip, 0)))?;
                socket.connect(target.addr).await
            }
            .await
        }
    }
    .map_err(|e| format!("connect {}: {e}", target.url))?;
    let _ = tcp.set_nodelay(true);
    let url = match &who.query {
        None => target.url.clone(),
        Some(q) => format!("{}{q}", target.url),
    };
    let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(cfg))
        .await
        .map_err(|e| format!("upgrade {}: {e}", target.url))?;
    Ok((ws, t0.elapsed()))
}

/// Sends a `subscribe` per channel (name, JSON name) and waits for every `subscribed`.
async fn subscribe(ws: &mut Ws, channels: &[&(String, String)]) -> Result<(), String> {
    if channels.is_empty() {
        return Ok(());
    }
    for (_, json) in channels {
        ws.feed(Message::text(wire::subscribe_frame(json)))
            .await
            .map_err(|e| format!("send subscribe: {e}"))?;
    }
    ws.flush()
        .await
        .map_err(|e| format!("send subscribe: {e}"))?;
    let mut pending = channels.len();
    while let Some(msg) = ws.next().await {
        match msg.map_err(|e| format!("waiting for subscribed: {e}"))? {
            Message::Text(t) => match wire::parse_frame(t.as_str()) {
                Frame::Subscribed { channel: c } if channels.iter().any(|(n, _)| *n == c) => {
                    pending -= 1;
                    if pending == 0 {
                        return Ok(());
                    }
                }
                Frame::Error { code, .. } => return Err(format!("subscribe: {code}")),
                _ => {}
            },
            Message::Close(c) => return Err(format!("closed while subscribing: {c:?}")),
            _ => {}
        }
    }
    Err("connection ended while subscribing".into())
}

/// One connection to open: which target, and which channel to subscribe (if any).
struct Plan {
    index: usize,
    target: usize,
    /// Channels to subscribe (indexes into the channel list); empty for publishers.
    channels: Vec<usize>,
}

/// An opened connection.
struct Opened {
    index: usize,
    target: usize,
    channels: Vec<usize>,
    ws: Ws,
}

struct Connected {
    opened: Vec<Opened>,
    /// Per-connection TCP + upgrade times, µs.
    connect_us: Vec<u64>,
    failed: u64,
    wall: Duration,
}

/// Opens (and subscribes) every planned connection, at most `concurrency` at a time.
async fn open_all(
    plans: Vec<Plan>,
    targets: &Arc<Vec<Target>>,
    channels: &Arc<Vec<(String, String)>>,
    args: &Args,
    identities: &Identities,
    read_buffer: usize,
    errors: &Arc<Errors>,
) -> Connected {
    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(args.connect_concurrency));
    let timeout = Duration::from_secs_f64(args.connect_timeout);
    let cfg = client_config(read_buffer);
    let mut set = JoinSet::new();
    for plan in plans {
        let sem = sem.clone();
        let targets = targets.clone();
        let channels = channels.clone();
        let who = identities.of(plan.index, !plan.channels.is_empty());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            let target = &targets[plan.target];
            let attempt = async {
                let (mut ws, took) = connect(target, cfg, &who).await.map_err(|e| (false, e))?;
                let names: Vec<&(String, String)> =
                    plan.channels.iter().map(|&c| &channels[c]).collect();
                subscribe(&mut ws, &names).await.map_err(|e| (true, e))?;
                Ok::<_, (bool, String)>((ws, took))
            };
            let result = match tokio::time::timeout(timeout, attempt).await {
                Ok(r) => r,
                Err(_) => Err((false, format!("timed out after {timeout:?}"))),
            };
            (plan, result)
        });
    }
    let mut out = Connected {
        opened: Vec::new(),
        connect_us: Vec::new(),
        failed: 0,
        wall: Duration::ZERO,
    };
    while let Some(joined) = set.join_next().await {
        let Ok((plan, result)) = joined else {
            out.failed += 1;
            continue;
        };
        match result {
            Ok((ws, took)) => {
                out.connect_us.push(took.as_micros() as u64);
                out.opened.push(Opened {
                    index: plan.index,
                    target: plan.target,
                    channels: plan.channels,
                    ws,
                });
            }
            Err((subscribing, e)) => {
                out.failed += 1;
                if subscribing {
                    errors.subscribe.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.connect.fetch_add(1, Ordering::Relaxed);
                }
                errors.sample(e);
            }
        }
    }
    out.opened.sort_by_key(|o| o.index);
    out.wall = t0.elapsed();
    out
}

/// Channels the `--hold-extra` connections subscribe to (never published to).
const HELD_CHANNELS: usize = 100;

/// Reads an idle connection (so pings are answered) until `stop` fires or the server ends it;
/// returns the socket so that closing it happens after the caller's measurement.
async fn hold(
    mut ws: Ws,
    mut stop: oneshot::Receiver<()>,
    dropped: &AtomicU64,
    errors: &Errors,
) -> Ws {
    loop {
        let msg = tokio::select! {
            biased;
            _ = &mut stop => return ws,
            msg = ws.next() => msg,
        };
        let why = match msg {
            Some(Ok(Message::Close(c))) => format!("idle connection closed: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => format!("idle connection: {e}"),
            None => "idle connection ended".into(),
        };
        dropped.fetch_add(1, Ordering::Relaxed);
        errors.closed(why);
        return ws;
    }
}

fn channel_names(args: &Args) -> Arc<Vec<(String, String)>> {
    Arc::new(
        (0..args.channels)
            .map(|c| {
                let name = format!("{}{c}", args.channel_prefix);
                let json = serde_json::to_string(&name).expect("a string serialises");
                (name, json)
            })
            .collect(),
    )
}

async fn phase_hook(args: &Args, phase: &'static str) {
    let Some(hook) = args.phase_hook.clone() else {
        return;
    };
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{hook} {phase}"))
            .status()
    })
    .await;
    match status {
        Ok(Ok(s)) if s.success() => {}
        Ok(Ok(s)) => eprintln!("[loadgen] phase hook '{phase}' exited with {s}"),
        Ok(Err(e)) => eprintln!("[loadgen] phase hook '{phase}' failed: {e}"),
        Err(e) => eprintln!("[loadgen] phase hook '{phase}' panicked: {e}"),
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

// ------------------------------------------------------------------------------ pub/sub

/// The measured window, ns on the process clock: messages sent in `[start, end)` count.
#[derive(Clone, Copy)]
struct Window {
    start: u64,
    end: u64,
}

impl Window {
    fn contains(&self, ns: u64) -> bool {
        ns >= self.start && ns < self.end
    }
}

/// Per target: latency histogram of measured deliveries.
struct TargetShared {
    latency_us: Mutex<Histogram<u64>>,
}

/// Delivery-bounded window of one publisher (`--window-mode deliveries`).
struct DeliveryWindow {
    /// Deliveries owed for what this publisher sent (sum of fan-outs), minus forgiven ones.
    owed: AtomicU64,
    /// Deliveries of this publisher's messages received by any subscriber.
    received: AtomicU64,
    waiting: AtomicBool,
    notify: Notify,
    limit: u64,
}

impl DeliveryWindow {
    fn outstanding(&self) -> u64 {
        self.owed
            .load(Ordering::SeqCst)
            .saturating_sub(self.received.load(Ordering::SeqCst))
    }

    fn on_delivery(&self) {
        let r = self.received.fetch_add(1, Ordering::SeqCst) + 1;
        if self.waiting.load(Ordering::SeqCst)
            && self.owed.load(Ordering::SeqCst).saturating_sub(r) <= self.limit / 4 * 3
            && self.waiting.swap(false, Ordering::SeqCst)
        {
            self.notify.notify_one();
        }
    }
}

/// Acknowledgement-bounded window of one publisher (`--window-mode ack`).
#[derive(Default)]
struct AckWindow {
    in_flight: AtomicU64,
    notify: Notify,
}

impl AckWindow {
    fn release(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        self.notify.notify_one();
    }
}

struct Shared {
    window: Window,
    targets: Vec<TargetShared>,
    /// First deliveries of measured messages so far (drain progress).
    delivered_measured: AtomicU64,
    /// Messages published in the measured window, per channel.
    published_measured: Vec<AtomicU64>,
    /// Messages published in total, per publisher.
    published: Vec<AtomicU64>,
    publishers_done: AtomicUsize,
    delivery_windows: Vec<DeliveryWindow>,
    errors: Arc<Errors>,
}

/// What one subscriber counted.
#[derive(Default)]
struct SubResult {
    target: usize,
    integrity: crate::accounting::Integrity,
    delivered_measured: u64,
    arrived_in_window: u64,
}

struct SubTask {
    shared: Arc<Shared>,
    target: usize,
    /// The channels this connection subscribed.
    channels: Vec<String>,
    window_deliveries: bool,
}

impl SubTask {
    async fn run(self, mut ws: Ws, mut stop: oneshot::Receiver<()>) -> SubResult {
        let shared = &*self.shared;
        let mut ledger = SubscriberLedger::default();
        let mut res = SubResult {
            target: self.target,
            ..SubResult::default()
        };
        let mut lat_buf: Vec<u64> = Vec::with_capacity(256);
        loop {
            let msg = tokio::select! {
                biased;
                _ = &mut stop => break,
                msg = ws.next() => msg,
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(c))) => {
                    let why = c.map_or_else(
                        || "close without code".to_owned(),
                        |c| format!("close {} {}", u16::from(c.code), c.reason),
                    );
                    shared.errors.closed(why);
                    break;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    shared.errors.closed(format!("read error: {e}"));
                    break;
                }
                None => {
                    shared.errors.closed("end of stream".into());
                    break;
                }
            };
            match wire::parse_frame(text.as_str()) {
                Frame::Delivery {
                    channel,
                    payload: Some(p),
                } => {
                    let now = now_ns();
                    if !self.channels.iter().any(|c| *c == channel) {
                        shared.errors.wrong_channel.fetch_add(1, Ordering::Relaxed);
                    }
                    let Some(arrival) = ledger.observe(p.publisher, p.seq) else {
                        shared.errors.unparsed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if !arrival.is_first() {
                        continue;
                    }
                    if shared.window.contains(now) {
                        res.arrived_in_window += 1;
                    }
                    if shared.window.contains(p.ts) {
                        res.delivered_measured += 1;
                        shared.delivered_measured.fetch_add(1, Ordering::Relaxed);
                        lat_buf.push(now.saturating_sub(p.ts) / 1_000);
                        if lat_buf.len() == lat_buf.capacity() {
                            self.flush_latencies(&mut lat_buf);
                        }
                    }
                    if self.window_deliveries
                        && let Some(w) = shared.delivery_windows.get(p.publisher as usize)
                    {
                        w.on_delivery();
                    }
                }
                Frame::Delivery { payload: None, .. } => {
                    shared.errors.unparsed.fetch_add(1, Ordering::Relaxed);
                }
                Frame::Error { code, .. } => shared.errors.server_error(&code),
                _ => {}
            }
        }
        self.flush_latencies(&mut lat_buf);
        res.integrity = ledger.integrity;
        res
    }

    fn flush_latencies(&self, buf: &mut Vec<u64>) {
        if buf.is_empty() {
            return;
        }
        let mut h = self.shared.targets[self.target]
            .latency_us
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for &us in buf.iter() {
            h.saturating_record(us.max(1));
        }
        buf.clear();
    }
}

/// How one publisher paces itself.
#[derive(Clone, Copy)]
enum Pace {
    /// Messages per second for this publisher.
    Fixed(f64),
    /// At most this many unacknowledged publishes.
    Ack(u64),
    /// At most this many deliveries outstanding.
    Deliveries,
}

struct PubTask {
    shared: Arc<Shared>,
    id: usize,
    publishers: usize,
    channels: Arc<Vec<(String, String)>>,
    fanout: Arc<Vec<u64>>,
    payload: usize,
    pace: Pace,
    start: u64,
}

type Sink = SplitSink<Ws, Message>;

impl PubTask {
    /// The `k`-th message of this publisher goes to channel `(k * P + id) % M`: over all
    /// publishers the channels are used round-robin.
    fn channel_of(&self, k: u64) -> usize {
        ((k * self.publishers as u64 + self.id as u64) % self.channels.len() as u64) as usize
    }

    async fn send(&self, sink: &mut Sink, k: u64, with_id: bool) -> Result<usize, ()> {
        let c = self.channel_of(k);
        let ts = now_ns();
        let payload = Payload {
            publisher: self.id as u64,
            seq: k,
            ts,
        };
        let frame = wire::publish_frame(
            &self.channels[c].1,
            &payload,
            self.payload,
            with_id.then_some(k),
        );
        if let Err(e) = sink.feed(Message::text(frame)).await {
            self.shared.errors.send.fetch_add(1, Ordering::Relaxed);
            self.shared
                .errors
                .sample(format!("publisher {}: send: {e}", self.id));
            return Err(());
        }
        self.shared.published[self.id].fetch_add(1, Ordering::Relaxed);
        if self.shared.window.contains(ts) {
            self.shared.published_measured[c].fetch_add(1, Ordering::Relaxed);
        }
        Ok(c)
    }

    async fn run(self, mut sink: Sink, ack: Arc<AckWindow>) -> Sink {
        let end = self.shared.window.end;
        let mut k: u64 = 0;
        let result: Result<(), ()> = async {
            match self.pace {
                Pace::Fixed(rate) => {
                    let interval = 1e9 / rate;
                    // Stagger publishers over one interval.
                    let offset = interval * self.id as f64 / self.publishers as f64;
                    let due = |k: u64| self.start + (offset + interval * k as f64) as u64;
                    loop {
                        let now = now_ns();
                        if now >= end {
                            break;
                        }
                        let mut n = 0;
                        while due(k) <= now && due(k) < end && n < 1024 {
                            self.send(&mut sink, k, false).await?;
                            k += 1;
                            n += 1;
                        }
                        if n > 0 {
                            sink.flush().await.map_err(|_| ())?;
                        }
                        let next = due(k).min(end);
                        if next > now_ns() {
                            tokio::time::sleep_until(instant_at(next)).await;
                        }
                    }
                }
                Pace::Ack(limit) => loop {
                    if now_ns() >= end {
                        break;
                    }
                    let mut n = 0;
                    while ack.in_flight.load(Ordering::SeqCst) < limit && n < 1024 {
                        ack.in_flight.fetch_add(1, Ordering::SeqCst);
                        self.send(&mut sink, k, true).await?;
                        k += 1;
                        n += 1;
                    }
                    if n > 0 {
                        sink.flush().await.map_err(|_| ())?;
                        continue;
                    }
                    let wait =
                        instant_at(end).min(tokio::time::Instant::now() + Duration::from_secs(1));
                    if tokio::time::timeout_at(wait, ack.notify.notified())
                        .await
                        .is_err()
                        && now_ns() < end
                    {
                        self.shared
                            .errors
                            .window_stalls
                            .fetch_add(1, Ordering::Relaxed);
                    }
                },
                Pace::Deliveries => {
                    let w = &self.shared.delivery_windows[self.id];
                    loop {
                        if now_ns() >= end {
                            break;
                        }
                        let mut n = 0;
                        while w.outstanding() < w.limit && n < 1024 {
                            let c = self.send(&mut sink, k, false).await?;
                            w.owed.fetch_add(self.fanout[c], Ordering::SeqCst);
                            k += 1;
                            n += 1;
                        }
                        if n > 0 {
                            sink.flush().await.map_err(|_| ())?;
                            continue;
                        }
                        w.waiting.store(true, Ordering::SeqCst);
                        if w.outstanding() < w.limit {
                            w.waiting.store(false, Ordering::SeqCst);
                            continue;
                        }
                        let wait = instant_at(end)
                            .min(tokio::time::Instant::now() + Duration::from_secs(1));
                        if tokio::time::timeout_at(wait, w.notify.notified())
                            .await
                            .is_err()
                            && now_ns() < end
                        {
                            // Nothing arrived for a second: forgive what is owed (lost
                            // deliveries would otherwise stall this publisher for good).
                            self.shared
                                .errors
                                .window_stalls
                                .fetch_add(1, Ordering::Relaxed);
                            w.owed
                                .store(w.received.load(Ordering::SeqCst), Ordering::SeqCst);
                        }
                        w.waiting.store(false, Ordering::SeqCst);
                    }
                }
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            self.shared
                .errors
                .closed(format!("publisher {} could not send", self.id));
        }
        self.shared.publishers_done.fetch_add(1, Ordering::SeqCst);
        sink
    }
}

/// Reads a publisher's socket: acknowledgements and errors.
async fn publisher_reader(
    mut stream: SplitStream<Ws>,
    ack: Arc<AckWindow>,
    errors: Arc<Errors>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let msg = tokio::select! {
            biased;
            _ = &mut stop => return,
            msg = stream.next() => msg,
        };
        match msg {
            Some(Ok(Message::Text(t))) => match wire::parse_frame(t.as_str()) {
                Frame::Published { .. } => ack.release(),
                Frame::Error { id, code } => {
                    errors.server_error(&code);
                    if id.is_some() {
                        ack.release();
                    }
                }
                _ => {}
            },
            Some(Ok(Message::Close(c))) => {
                errors.closed(format!("publisher connection closed: {c:?}"));
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                errors.closed(format!("publisher read error: {e}"));
                return;
            }
            None => return,
        }
    }
}

/// Whether the server acknowledges a publish with an id (probe on an unused channel).
async fn server_acks(ws: &mut Ws, args: &Args) -> bool {
    let channel = serde_json::to_string(&format!("{}probe", args.channel_prefix))
        .expect("a string serialises");
    let frame = format!(
        "{{\"type\":\"publish\",\"id\":0,\"channel\":{channel},\"data\":{{\"probe\":true}}}}"
    );
    if ws.send(Message::text(frame)).await.is_err() {
        return false;
    }
    let wait = async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg
                && let Frame::Published { .. } = wire::parse_frame(t.as_str())
            {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(Duration::from_secs(2), wait)
        .await
        .unwrap_or(false)
}

fn cpu_seconds() -> Option<f64> {
    report::process_cpu_seconds()
}

/// Runs the pub/sub mode and returns the report.
pub async fn pubsub(args: &Args, targets: Vec<Target>, threads: usize) -> Result<Report, String> {
    let cpu_start = cpu_seconds();
    let targets = Arc::new(targets);
    let channels = channel_names(args);
    let errors = Arc::new(Errors::default());
    let nt = targets.len();
    let identities = Identities::new(args)?;
    let m = args.channels;
    let k = args.subs_per_conn;

    eprintln!(
        "[loadgen] connecting {} subscribers ({} channels) and {} publishers to {} target(s)",
        args.subs, m, args.publishers, nt
    );
    let plans = (0..args.subs)
        .map(|i| Plan {
            index: i,
            target: i % nt,
            channels: (0..k).map(|j| (i * k + j) % m).collect(),
        })
        .collect();
    let subs = open_all(plans, &targets, &channels, args, &identities, 4096, &errors).await;
    let plans = (0..args.publishers)
        .map(|p| Plan {
            index: p,
            target: p % nt,
            channels: Vec::new(),
        })
        .collect();
    let mut pubs = open_all(
        plans,
        &targets,
        &channels,
        args,
        &identities,
        16 * 1024,
        &errors,
    )
    .await;
    let mut connect_us = subs.connect_us.clone();
    connect_us.extend(&pubs.connect_us);
    let connect_wall = subs.wall + pubs.wall;
    if subs.opened.is_empty() && args.subs > 0 {
        return Err("no subscriber could connect".into());
    }
    if pubs.opened.is_empty() {
        return Err("no publisher could connect".into());
    }
    // Held connections: subscribed to channels nobody publishes to, read (pings) until the end.
    let held_dropped = Arc::new(AtomicU64::new(0));
    let mut held = JoinSet::new();
    if args.hold_extra > 0 {
        let held_channels = Arc::new(
            (0..HELD_CHANNELS)
                .map(|c| {
                    let name = format!("{}held-{c}", args.channel_prefix);
                    let json = serde_json::to_string(&name).expect("a string serialises");
                    (name, json)
                })
                .collect::<Vec<_>>(),
        );
        let plans = (0..args.hold_extra)
            .map(|i| Plan {
                index: args.subs + i,
                target: i % nt,
                channels: vec![i % HELD_CHANNELS],
            })
            .collect();
        let opened = open_all(
            plans,
            &targets,
            &held_channels,
            args,
            &identities,
            1024,
            &errors,
        )
        .await;
        eprintln!(
            "[loadgen] holding {} extra connections ({} failed)",
            opened.opened.len(),
            opened.failed
        );
        for o in opened.opened {
            let (dropped, errors) = (held_dropped.clone(), errors.clone());
            held.spawn(async move {
                // Never told to stop: aborted (and its socket closed) when `held` is dropped.
                let (_never, stop) = oneshot::channel::<()>();
                hold(o.ws, stop, &dropped, &errors).await
            });
        }
    }

    // Fan-out per channel, overall and per target, from the subscribers that made it.
    let mut fanout = vec![0u64; m];
    let mut fanout_t = vec![vec![0u64; m]; nt];
    let mut subs_t = vec![0u64; nt];
    for o in &subs.opened {
        for &c in &o.channels {
            fanout[c] += 1;
            fanout_t[o.target][c] += 1;
        }
        subs_t[o.target] += 1;
    }
    let fanout = Arc::new(fanout);

    // Pacing.
    let window_mode = if args.rate > 0.0 {
        None
    } else {
        Some(match args.window_mode {
            WindowMode::Auto => {
                if server_acks(&mut pubs.opened[0].ws, args).await {
                    WindowMode::Ack
                } else {
                    WindowMode::Deliveries
                }
            }
            other => other,
        })
    };
    let np = pubs.opened.len();
    let pace = match window_mode {
        None => Pace::Fixed(args.rate / np as f64),
        Some(WindowMode::Ack) => Pace::Ack(args.window),
        Some(_) => Pace::Deliveries,
    };
    let avg_fanout = fanout.iter().sum::<u64>() as f64 / m as f64;
    let delivery_limit = ((args.window as f64 * avg_fanout).ceil() as u64).max(1);

    phase_hook(args, "ready").await;
    let t0 = now_ns();
    let window = Window {
        start: t0 + secs_ns(args.warmup),
        end: t0 + secs_ns(args.warmup) + secs_ns(args.duration),
    };
    let shared = Arc::new(Shared {
        window,
        targets: (0..nt)
            .map(|_| TargetShared {
                latency_us: Mutex::new(histogram()),
            })
            .collect(),
        delivered_measured: AtomicU64::new(0),
        published_measured: (0..m).map(|_| AtomicU64::new(0)).collect(),
        published: (0..np).map(|_| AtomicU64::new(0)).collect(),
        publishers_done: AtomicUsize::new(0),
        delivery_windows: (0..np)
            .map(|_| DeliveryWindow {
                owed: AtomicU64::new(0),
                received: AtomicU64::new(0),
                waiting: AtomicBool::new(false),
                notify: Notify::new(),
                limit: delivery_limit,
            })
            .collect(),
        errors: errors.clone(),
    });

    // Subscribers read from now on.
    let mut sub_stops = Vec::with_capacity(subs.opened.len());
    let mut sub_tasks = JoinSet::new();
    for o in subs.opened {
        let (tx, rx) = oneshot::channel();
        sub_stops.push(tx);
        let task = SubTask {
            shared: shared.clone(),
            target: o.target,
            channels: o.channels.iter().map(|&c| channels[c].0.clone()).collect(),
            window_deliveries: matches!(pace, Pace::Deliveries),
        };
        sub_tasks.spawn(task.run(o.ws, rx));
    }
    // Publishers: a writer and a reader per connection.
    let mut pub_stops = Vec::with_capacity(np);
    let mut pub_writers = JoinSet::new();
    let mut pub_readers = JoinSet::new();
    for (id, o) in pubs.opened.into_iter().enumerate() {
        let (sink, stream) = o.ws.split();
        let ack = Arc::new(AckWindow::default());
        let (tx, rx) = oneshot::channel();
        pub_stops.push(tx);
        pub_readers.spawn(publisher_reader(stream, ack.clone(), errors.clone(), rx));
        let task = PubTask {
            shared: shared.clone(),
            id,
            publishers: np,
            channels: channels.clone(),
            fanout: fanout.clone(),
            payload: args.payload,
            pace,
            start: t0,
        };
        pub_writers.spawn(task.run(sink, ack));
    }
    eprintln!(
        "[loadgen] publishing: {:.1} s warm-up, {:.1} s measured",
        args.warmup, args.duration
    );

    tokio::time::sleep_until(instant_at(window.start)).await;
    phase_hook(args, "measure_start").await;
    let cpu_w0 = cpu_seconds();
    tokio::time::sleep_until(instant_at(window.end)).await;
    phase_hook(args, "measure_end").await;
    let cpu_w1 = cpu_seconds();

    // Publishers stop at the end of the window; then wait for what is outstanding.
    let drain_start = Instant::now();
    let drain_deadline = drain_start + Duration::from_secs_f64(args.drain);
    while shared.publishers_done.load(Ordering::SeqCst) < np && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let published_measured: Vec<u64> = shared
        .published_measured
        .iter()
        .map(|a| a.load(Ordering::SeqCst))
        .collect();
    let expected = expected_deliveries(&published_measured, &fanout);
    while shared.delivered_measured.load(Ordering::Relaxed) < expected
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain = drain_start.elapsed();
    phase_hook(args, "done").await;

    for tx in sub_stops {
        let _ = tx.send(());
    }
    let mut sub_results = Vec::new();
    while let Some(r) = sub_tasks.join_next().await {
        if let Ok(r) = r {
            sub_results.push(r);
        }
    }
    for tx in pub_stops {
        let _ = tx.send(());
    }
    let mut sinks = Vec::new();
    while let Some(s) = pub_writers.join_next().await {
        if let Ok(s) = s {
            sinks.push(s);
        }
    }
    while pub_readers.join_next().await.is_some() {}
    drop(sinks);

    // Figures.
    let mut integrity = crate::accounting::Integrity::default();
    let mut delivered = 0;
    let mut arrived = 0;
    let mut delivered_t = vec![0u64; nt];
    let mut arrived_t = vec![0u64; nt];
    for r in &sub_results {
        integrity.add(&r.integrity);
        delivered += r.delivered_measured;
        arrived += r.arrived_in_window;
        delivered_t[r.target] += r.delivered_measured;
        arrived_t[r.target] += r.arrived_in_window;
    }
    let mut latency = histogram();
    let mut per_target = Vec::with_capacity(nt);
    for (t, target) in targets.iter().enumerate() {
        let h = shared.targets[t]
            .latency_us
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        latency.add(&*h).expect("same bounds");
        let expected_t = expected_deliveries(&published_measured, &fanout_t[t]);
        per_target.push(TargetFigures {
            url: target.url.clone(),
            connections: subs_t[t],
            expected: expected_t,
            delivered: delivered_t[t],
            lost: lost(expected_t, delivered_t[t]),
            delivered_per_s: arrived_t[t] as f64 / args.duration,
            latency_us: report::Percentiles::of(&h),
        });
    }
    let published_total: u64 = shared
        .published
        .iter()
        .map(|a| a.load(Ordering::SeqCst))
        .sum();
    let published_in_window: u64 = published_measured.iter().sum();
    let cpu_end = cpu_seconds();
    let figures = PubSubFigures {
        label: args.label.clone(),
        targets: targets.iter().map(|t| t.url.clone()).collect(),
        subs: args.subs,
        subs_connected: sub_results.len(),
        channels: m,
        publishers: np,
        rate: args.rate,
        window: window_mode.map(|_| args.window),
        window_mode: window_mode.map(|w| match w {
            WindowMode::Ack => "ack",
            _ => "deliveries",
        }),
        payload: args.payload,
        warmup_s: args.warmup,
        duration_s: args.duration,
        drain_s: drain.as_secs_f64(),
        published: published_total,
        published_measured: published_in_window,
        expected,
        delivered,
        lost: lost(expected, delivered),
        integrity,
        delivered_per_s: arrived as f64 / args.duration,
        latency_us: report::Percentiles::of(&latency),
        connect: report::ConnectFigures::of(&connect_us, subs.failed + pubs.failed, connect_wall),
        per_target,
        errors: report::ErrorFigures::of(&errors),
        threads,
        cpu_total_s: cpu_start.zip(cpu_end).map(|(a, b)| b - a),
        cpu_window_s: cpu_w0.zip(cpu_w1).map(|(a, b)| b - a),
    };
    Ok(report::pubsub(&figures))
}

// ------------------------------------------------------------------------------ idle

/// Runs the idle mode: `n` subscribed connections held for `--hold` seconds.
pub async fn idle(
    args: &Args,
    targets: Vec<Target>,
    n: usize,
    threads: usize,
) -> Result<Report, String> {
    let cpu_start = cpu_seconds();
    let targets = Arc::new(targets);
    let channels = channel_names(args);
    let errors = Arc::new(Errors::default());
    let nt = targets.len();
    let identities = Identities::new(args)?;
    eprintln!(
        "[loadgen] opening {n} idle connections ({} channels) to {nt} target(s)",
        args.channels
    );
    let plans = (0..n)
        .map(|i| Plan {
            index: i,
            target: i % nt,
            channels: vec![i % args.channels],
        })
        .collect();
    let conns = open_all(plans, &targets, &channels, args, &identities, 4096, &errors).await;
    let mut connected_t = vec![0u64; nt];
    for o in &conns.opened {
        connected_t[o.target] += 1;
    }
    let connected = conns.opened.len();
    phase_hook(args, "ready").await;
    let cpu_h0 = cpu_seconds();
    eprintln!(
        "[loadgen] {connected} connected; holding {:.1} s",
        args.hold
    );
    let dropped = Arc::new(AtomicU64::new(0));
    let mut stops = Vec::with_capacity(connected);
    let mut tasks = JoinSet::new();
    for o in conns.opened {
        let (tx, rx) = oneshot::channel::<()>();
        stops.push(tx);
        let dropped = dropped.clone();
        let errors = errors.clone();
        tasks.spawn(async move { hold(o.ws, rx, &dropped, &errors).await });
    }
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    phase_hook(args, "hold_end").await;
    let cpu_h1 = cpu_seconds();
    for tx in stops {
        let _ = tx.send(());
    }
    let mut sockets = Vec::with_capacity(connected);
    while let Some(ws) = tasks.join_next().await {
        if let Ok(ws) = ws {
            sockets.push(ws);
        }
    }
    drop(sockets);
    let cpu_end = cpu_seconds();
    let figures = IdleFigures {
        label: args.label.clone(),
        targets: targets.iter().map(|t| t.url.clone()).collect(),
        requested: n,
        channels: args.channels,
        connected,
        dropped: dropped.load(Ordering::Relaxed),
        hold_s: args.hold,
        connect: report::ConnectFigures::of(&conns.connect_us, conns.failed, conns.wall),
        per_target: targets
            .iter()
            .zip(&connected_t)
            .map(|(t, &c)| (t.url.clone(), c))
            .collect(),
        errors: report::ErrorFigures::of(&errors),
        threads,
        cpu_total_s: cpu_start.zip(cpu_end).map(|(a, b)| b - a),
        cpu_window_s: cpu_h0.zip(cpu_h1).map(|(a, b)| b - a),
    };
    Ok(report::idle(&figures))
}

/// Churn mode: `n` connections each subscribe to a channel no one else uses, wait for
/// `subscribed`, unsubscribe, wait for `unsubscribed`, and start again with the next channel,
/// for `--duration` s after `--warmup` s; every cycle is a first local subscriber, so it costs
/// the server a broker SUBSCRIBE (and UNSUBSCRIBE where the server sends one).
pub async fn churn(
    args: &Args,
    targets: Vec<Target>,
    n: usize,
    threads: usize,
) -> Result<Report, String> {
    let cpu_start = cpu_seconds();
    let targets = Arc::new(targets);
    let errors = Arc::new(Errors::default());
    let nt = targets.len();
    let identities = Identities::new(args)?;
    eprintln!("[loadgen] opening {n} churning connections to {nt} target(s)");
    let plans = (0..n)
        .map(|i| Plan {
            index: i,
            target: i % nt,
            channels: Vec::new(),
        })
        .collect();
    let none = Arc::new(Vec::new());
    let conns = open_all(plans, &targets, &none, args, &identities, 4096, &errors).await;
    if conns.opened.is_empty() {
        return Err("no connection could be opened".into());
    }
    phase_hook(args, "ready").await;
    let t0 = now_ns();
    let window = Window {
        start: t0 + secs_ns(args.warmup),
        end: t0 + secs_ns(args.warmup) + secs_ns(args.duration),
    };
    let cycles = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(histogram()));
    let mut tasks = JoinSet::new();
    for o in conns.opened {
        let (cycles, latency, errors) = (cycles.clone(), latency.clone(), errors.clone());
        let prefix = args.channel_prefix.clone();
        tasks.spawn(async move {
            let mut ws = o.ws;
            let mut k = 0u64;
            let mut lat = Vec::with_capacity(64);
            while now_ns() < window.end {
                let name = format!("{prefix}churn-{}-{k}", o.index);
                let json = serde_json::to_string(&name).expect("a string serialises");
                let started = now_ns();
                if let Err(e) = subscribe(&mut ws, &[&(name.clone(), json.clone())]).await {
                    errors.subscribe.fetch_add(1, Ordering::Relaxed);
                    errors.sample(e);
                    break;
                }
                let subscribed = now_ns();
                if let Err(e) = unsubscribe(&mut ws, &name, &json).await {
                    errors.subscribe.fetch_add(1, Ordering::Relaxed);
                    errors.sample(e);
                    break;
                }
                if window.contains(started) && window.contains(now_ns()) {
                    cycles.fetch_add(1, Ordering::Relaxed);
                    lat.push((subscribed - started) / 1_000);
                }
                k += 1;
            }
            let mut h = latency.lock().unwrap_or_else(|e| e.into_inner());
            for us in lat {
                h.saturating_record(us.max(1));
            }
        });
    }
    tokio::time::sleep_until(instant_at(window.start)).await;
    phase_hook(args, "measure_start").await;
    let cpu_w0 = cpu_seconds();
    tokio::time::sleep_until(instant_at(window.end)).await;
    phase_hook(args, "measure_end").await;
    let cpu_w1 = cpu_seconds();
    while tasks.join_next().await.is_some() {}
    phase_hook(args, "done").await;
    let cycles = cycles.load(Ordering::Relaxed);
    let h = latency.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let figures = report::ChurnFigures {
        label: args.label.clone(),
        connections: n,
        duration_s: args.duration,
        cycles,
        subscribe_us: report::Percentiles::of(&h),
        connect: report::ConnectFigures::of(&conns.connect_us, conns.failed, conns.wall),
        errors: report::ErrorFigures::of(&errors),
        threads,
        cpu_total_s: cpu_start.zip(cpu_seconds()).map(|(a, b)| b - a),
        cpu_window_s: cpu_w0.zip(cpu_w1).map(|(a, b)| b - a),
    };
    Ok(report::churn(&figures))
}

/// Sends `unsubscribe` and waits for the matching `unsubscribed`.
async fn unsubscribe(ws: &mut Ws, channel: &str, channel_json: &str) -> Result<(), String> {
    ws.send(Message::text(format!(
        "{{\"type\":\"unsubscribe\",\"channel\":{channel_json}}}"
    )))
    .await
    .map_err(|e| format!("send unsubscribe: {e}"))?;
    while let Some(msg) = ws.next().await {
        match msg.map_err(|e| format!("waiting for unsubscribed: {e}"))? {
            Message::Text(t) => match wire::parse_frame(t.as_str()) {
                Frame::Unsubscribed { channel: c } if c == channel => return Ok(()),
                Frame::Error { code, .. } => return Err(format!("unsubscribe {channel}: {code}")),
                _ => {}
            },
            Message::Close(c) => return Err(format!("closed while unsubscribing: {c:?}")),
            _ => {}
        }
    }
    Err("connection ended while unsubscribing".into())
}
