//! The raw baseline: a minimal TCP relay with length-prefixed frames, no
//! XML, no authentication. The same traffic through it tells how much XMPP
//! itself costs (`starling-bench run --target raw` against
//! `starling-bench relay`).
//!
//! Frames: `u32` big-endian length, then the bytes. A client's first frame
//! is its name; every later frame is `u8` name length, the recipient's
//! name, and the payload, which the relay forwards as one frame.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Peers = Arc<Mutex<HashMap<String, mpsc::Sender<Vec<u8>>>>>;

/// Largest frame the relay accepts.
const MAX_FRAME: usize = 1 << 20;

/// Runs the relay on `listen` until the process ends.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot bind {listen}"))?;
    println!("raw relay listening on {}", listener.local_addr()?);
    let peers: Peers = Arc::new(Mutex::new(HashMap::new()));
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(handle(tcp, peers.clone()));
    }
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> anyhow::Result<Option<Vec<u8>>> {
    let len = match r.read_u32().await {
        Ok(l) => l as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if len > MAX_FRAME {
        bail!("frame of {len} bytes");
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

async fn handle(tcp: TcpStream, peers: Peers) -> anyhow::Result<()> {
    let (r, w) = tcp.into_split();
    let mut r = BufReader::new(r);
    let Some(name) = read_frame(&mut r).await? else {
        return Ok(());
    };
    let name = String::from_utf8(name)?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4096);
    peers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.clone(), tx);
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::new(w);
        while let Some(frame) = rx.recv().await {
            w.write_u32(frame.len() as u32).await?;
            w.write_all(&frame).await?;
            while let Ok(more) = rx.try_recv() {
                w.write_u32(more.len() as u32).await?;
                w.write_all(&more).await?;
            }
            w.flush().await?;
        }
        anyhow::Ok(())
    });
    while let Some(frame) = read_frame(&mut r).await? {
        let Some((&n, rest)) = frame.split_first() else {
            continue;
        };
        let n = n as usize;
        if rest.len() < n {
            continue;
        }
        let to = String::from_utf8_lossy(&rest[..n]).into_owned();
        let target = peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&to)
            .cloned();
        if let Some(t) = target {
            let _ = t.send(rest[n..].to_vec()).await;
        }
    }
    peers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&name);
    writer.abort();
    Ok(())
}

/// A relay client.
pub struct RawClient {
    pub reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    pub writer: tokio::net::tcp::OwnedWriteHalf,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, name: &str) -> anyhow::Result<RawClient> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (r, mut w) = tcp.into_split();
        w.write_u32(name.len() as u32).await?;
        w.write_all(name.as_bytes()).await?;
        Ok(RawClient {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    /// Encodes one message for `to`.
    pub fn frame(to: &str, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(5 + to.len() + payload.len());
        f.extend_from_slice(&((1 + to.len() + payload.len()) as u32).to_be_bytes());
        f.push(to.len() as u8);
        f.extend_from_slice(to.as_bytes());
        f.extend_from_slice(payload);
        f
    }

    pub async fn next(
        reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        read_frame(reader).await
    }
}
