//! The writer's HAVE batching, over a real loopback socket.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::connection::CONNECT_TIMEOUT;

/// A log that hands out scripted splits, one per call, and counts calls.
#[derive(Default)]
struct Script {
    batches: Mutex<VecDeque<NewHaves>>,
    calls: AtomicUsize,
}

impl Script {
    fn push(&self, urgent: &[u32], redundant: &[u32], complete: bool) {
        let mut b = self.batches.lock().unwrap();
        b.push_back(NewHaves {
            urgent: urgent.iter().copied().map(PieceIndex).collect(),
            redundant: redundant.iter().copied().map(PieceIndex).collect(),
            pos: 0,
            complete,
        });
    }
}

impl HaveLog for Script {
    fn haves_since(&self, pos: usize) -> (Vec<PieceIndex>, usize) {
        (Vec::new(), pos)
    }

    fn haves_for(&self, _peer: Option<PeerKey>, pos: usize) -> NewHaves {
        let mut next = self
            .batches
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(NewHaves {
                urgent: Vec::new(),
                redundant: Vec::new(),
                pos,
                complete: false,
            });
        next.pos = pos + 1;
        self.calls.fetch_add(1, Ordering::SeqCst);
        next
    }
}

/// A running write loop fed by `Script`, and the other end of its socket.
struct Rig {
    script: Arc<Script>,
    changed: watch::Sender<usize>,
    ctl: mpsc::Sender<Message>,
    _data: mpsc::Sender<Message>,
    peer: FrameReader<TcpStream>,
}

impl Rig {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_read, write) = ours.unwrap().into_split();
        let script = Arc::new(Script::default());
        let (changed, rx) = watch::channel(0);
        let (ctl, ctl_rx) = mpsc::channel(8);
        let (data, data_rx) = mpsc::channel(8);
        let feed = HaveFeed {
            log: script.clone(),
            changed: rx,
            pos: 0,
            peer: Some(1),
        };
        tokio::spawn(async move {
            let _keep_read_half = _read;
            write_loop(FrameWriter::new(write), ctl_rx, data_rx, Some(feed)).await
        });
        Self {
            script,
            changed,
            ctl,
            _data: data,
            peer: FrameReader::new(theirs.unwrap().0),
        }
    }

    /// Announces the next scripted batch and waits until the writer took it.
    async fn announce(&self) {
        let before = self.script.calls.load(Ordering::SeqCst);
        self.changed.send_modify(|n| *n += 1);
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        while self.script.calls.load(Ordering::SeqCst) == before {
            assert!(Instant::now() < deadline, "the writer never read the log");
            tokio::task::yield_now().await;
        }
    }

    async fn next(&mut self) -> Message {
        self.peer
            .read_message(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("the writer closed the socket")
    }
}

#[tokio::test]
async fn a_have_the_peer_does_not_need_waits_for_the_delay() {
    let mut rig = Rig::start().await;
    rig.script.push(&[], &[5], false);
    let t0 = Instant::now();
    rig.announce().await;
    assert_eq!(rig.next().await, Message::Have(PieceIndex(5)));
    assert!(
        t0.elapsed() >= LAZY_HAVE_DELAY,
        "sent alone after {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn a_waiting_have_rides_with_the_next_write() {
    let mut rig = Rig::start().await;
    rig.script.push(&[], &[5], false);
    let t0 = Instant::now();
    rig.announce().await;
    rig.ctl.send(Message::Interested).await.unwrap();
    assert_eq!(rig.next().await, Message::Interested);
    assert_eq!(rig.next().await, Message::Have(PieceIndex(5)));
    assert!(t0.elapsed() < LAZY_HAVE_DELAY, "took {:?}", t0.elapsed());
}

#[tokio::test]
async fn urgent_haves_go_at_once_and_completion_sends_the_waiting_ones() {
    let mut rig = Rig::start().await;
    let t0 = Instant::now();
    rig.script.push(&[], &[5], false);
    rig.announce().await;
    rig.script.push(&[6], &[7], false);
    rig.announce().await;
    // The urgent HAVE carried the waiting ones along.
    assert_eq!(rig.next().await, Message::Have(PieceIndex(6)));
    assert_eq!(rig.next().await, Message::Have(PieceIndex(5)));
    assert_eq!(rig.next().await, Message::Have(PieceIndex(7)));
    rig.script.push(&[], &[8], false);
    rig.announce().await;
    rig.script.push(&[], &[], true);
    rig.announce().await;
    assert_eq!(rig.next().await, Message::Have(PieceIndex(8)));
    assert!(t0.elapsed() < LAZY_HAVE_DELAY, "took {:?}", t0.elapsed());
}
