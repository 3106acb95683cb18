//! The roster workload: a few online users send each other subscription
//! requests, approve or deny the ones they get, and cancel some, while the
//! nemesis works (RFC 6121 §3). After healing each reads its roster
//! (RFC 6121 §2.1.3) and the checker asks whether every pair agrees: `to`
//! on one side is `from` on the other.
use std::time::Duration;

use rand::Rng;

use super::{bare, login, nap, Ctx, Stage, STEP};
use crate::xmpp::{escape, Conn, NS_ROSTER, NS_SM};
use jepsen_lite::history::{Entry, RosterItem};

pub fn user_name(i: usize) -> String {
    format!("ro{i}")
}

pub fn users(n: usize) -> Vec<String> {
    (0..n).map(user_name).collect()
}

pub async fn client(ctx: Ctx, i: usize, n: usize, ops_per_sec: f64) {
    let me = user_name(i);
    let my_bare = bare(&me);
    let mut rng = ctx.rng(&me);
    let pause = Duration::from_millis((1000.0 / ops_per_sec.max(0.1)) as u64);
    while ctx.stage() == Stage::Faults {
        let (node, _) = ctx.random_node(&mut rng);
        let Ok((mut conn, _)) = login(&ctx, node, &me, "desk").await else {
            nap(&mut rng, 200, 800).await;
            continue;
        };
        let mut inbound = 0u32;
        if conn.send("<presence/>").await.is_err() {
            continue;
        }
        let mut next = tokio::time::Instant::now() + pause;
        loop {
            if ctx.stage() != Stage::Faults {
                conn.close().await;
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    next += pause;
                    let j = (i + rng.gen_range(1..n)) % n;
                    let kind = match rng.gen_range(0..10) {
                        0..=6 => "subscribe",
                        7 => "unsubscribe",
                        8 => "unsubscribed",
                        _ => "subscribed",
                    };
                    if send(&ctx, &mut conn, &me, &my_bare, &bare(&user_name(j)), kind).await.is_err() {
                        break;
                    }
                }
                r = conn.next(Duration::from_secs(3600)) => {
                    let Ok(el) = r else { break };
                    if answer(&ctx, &mut conn, &mut rng, &me, &my_bare, &mut inbound, &el).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

/// Answers one element: an ack request, or a subscription request (approved
/// four times in five, RFC 6121 §3.1.4, else denied).
async fn answer(
    ctx: &Ctx,
    conn: &mut Conn,
    rng: &mut rand::rngs::StdRng,
    me: &str,
    my_bare: &str,
    inbound: &mut u32,
    el: &crate::xmpp::Element,
) -> Result<(), crate::xmpp::XmppError> {
    match el.name.as_str() {
        "r" if el.ns() == NS_SM => conn.ack(*inbound).await,
        "message" | "presence" | "iq" => {
            *inbound = inbound.wrapping_add(1);
            if el.name == "presence" && el.attr("type") == Some("subscribe") {
                let from = el.attr("from").unwrap_or_default();
                let from = from.split('/').next().unwrap_or(from).to_string();
                let kind = if rng.gen_bool(0.8) {
                    "subscribed"
                } else {
                    "unsubscribed"
                };
                send(ctx, conn, me, my_bare, &from, kind).await?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn send(
    ctx: &Ctx,
    conn: &mut Conn,
    me: &str,
    from: &str,
    to: &str,
    kind: &str,
) -> Result<(), crate::xmpp::XmppError> {
    ctx.rec.record(Entry::RosterSend {
        t_us: ctx.rec.now(),
        process: me.to_string(),
        kind: kind.to_string(),
        from: from.to_string(),
        to: to.to_string(),
        node: conn.node,
    });
    conn.send(&format!(
        "<presence type='{kind}' to='{}'/><r xmlns='{NS_SM}'/>",
        escape(to)
    ))
    .await
}

/// After healing: `user`'s roster, read on some node (retried).
pub async fn read_final(ctx: &Ctx, user: &str) {
    let mut rng = ctx.rng(&format!("{user}-final"));
    for _ in 0..10 {
        let (node, _) = ctx.random_node(&mut rng);
        let Ok((mut conn, _)) = login(ctx, node, user, "final").await else {
            nap(&mut rng, 300, 900).await;
            continue;
        };
        if conn
            .send(&format!(
                "<iq type='get' id='roster1'><query xmlns='{NS_ROSTER}'/></iq>"
            ))
            .await
            .is_err()
        {
            continue;
        }
        let deadline = tokio::time::Instant::now() + STEP;
        while let Ok(el) = conn
            .next(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            if el.name == "iq" && el.attr("id") == Some("roster1") {
                if el.attr("type") != Some("result") {
                    break;
                }
                let items = el
                    .child("query")
                    .map(|q| {
                        q.children
                            .iter()
                            .filter(|c| c.name == "item")
                            .map(|c| RosterItem {
                                jid: c.attr("jid").unwrap_or_default().to_string(),
                                subscription: c.attr("subscription").unwrap_or("none").to_string(),
                                ask: c.attr("ask") == Some("subscribe"),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                ctx.rec.record(Entry::RosterFinal {
                    t_us: ctx.rec.now(),
                    owner: bare(user),
                    node,
                    items,
                });
                conn.close().await;
                return;
            }
        }
    }
}
