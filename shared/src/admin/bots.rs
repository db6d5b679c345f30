//! Every user's bot, for operators: `GET /api/v1/admin/bots` pages through the guardian's index
//! of active bots (never a Scan), and `POST /api/v1/admin/users/{user_id}/bot/stop` stops one as
//! its owner's stop does, with reason `admin_stop`.

use crate::dynamo::Item;
use crate::error::ApiError;
use crate::keys;
use crate::state::{Bitget, Table, Vault};
use crate::trading::bot::{self, StopAnswer, ADMIN_STOP};
use crate::trading::model::{ExchangeKind, Position};
use crate::trading::paging;
use crate::trading::store::{BotRecord, BotState, IndexRecord, LivePosition, PaperPosition};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

/// Index reads one page may make: a page of few matching bots in a large index ends early, with
/// a cursor, instead of reading the whole index.
const MAX_INDEX_READS: usize = 10;
const INDEX_PAGE_ITEMS: i32 = 200;

#[derive(Debug, Serialize)]
pub struct AdminBot {
    pub user_id: String,
    pub email: Option<String>,
    pub symbol: String,
    pub state: BotState,
    pub exchange: ExchangeKind,
    pub positions: Vec<Position>,
    #[serde(with = "rust_decimal::serde::str")]
    pub unrealized_pnl: Decimal,
    pub updated_at: String,
}

#[derive(Debug, Serialize)]
pub struct BotsPage {
    pub bots: Vec<AdminBot>,
    pub next_cursor: Option<String>,
}

/// Where a page ended: the index partition, and the key of the last item read in it.
#[derive(Serialize, Deserialize)]
struct Cursor {
    partition: usize,
    after: Option<HashMap<String, String>>,
}

fn to_key(item: &Item) -> HashMap<String, String> {
    item.iter().filter_map(|(k, v)| v.as_s().ok().map(|s| (k.clone(), s.clone()))).collect()
}

fn from_key(key: &HashMap<String, String>) -> Item {
    key.iter().map(|(k, v)| (k.clone(), crate::dynamo::s(v.as_str()))).collect()
}

/// A bot found in the index, with the positions that follow it there.
struct Found {
    /// Where a page that begins with this bot starts: its partition and the item before it.
    at: (usize, Option<Item>),
    bot: BotRecord,
    paper: Vec<PaperPosition>,
    live: Vec<LivePosition>,
}

fn wanted_states(query: &HashMap<String, String>) -> Result<Vec<BotState>, ApiError> {
    match query.get("state").map(String::as_str) {
        None => Ok(vec![BotState::Running, BotState::Stopping]),
        Some("running") => Ok(vec![BotState::Running]),
        Some("stopping") => Ok(vec![BotState::Stopping]),
        Some(_) => Err(ApiError::BadRequest { code: "invalid_state", detail: "state is running or stopping".into() }),
    }
}

/// `GET /api/v1/admin/bots?state=running|stopping&limit=&cursor=`.
pub async fn list(state: &(impl Table + Vault + Bitget), query: Option<&str>) -> Result<BotsPage, ApiError> {
    let parameters = paging::query_parameters(query, &["state", "limit", "cursor"])?;
    let states = wanted_states(&parameters)?;
    let limit = paging::limit(&parameters)?;
    let keys = state.encryption_keys().get().await.map_err(|e| ApiError::internal("loading encryption keys", e))?;
    let scope = format!("admin-bots|{}", parameters.get("state").map(String::as_str).unwrap_or(""));
    let cursor: Option<Cursor> = parameters.get("cursor").map(|c| paging::open(&keys, &scope, c)).transpose()?;
    let partitions = keys::every_active_partition();
    let (mut partition, mut start) = match cursor {
        Some(c) if c.partition < partitions.len() => (c.partition, c.after.as_ref().map(from_key)),
        Some(_) => return Err(paging::invalid_cursor()),
        None => (0, None),
    };
    let trading = state.trading_store();
    let mut found: Vec<Found> = Vec::new();
    let mut reads = 0;
    let next = 'read: loop {
        if reads == MAX_INDEX_READS {
            // Out of reads: the last bot's positions may lie past them, so the next page begins
            // with that bot (unless it is the only one: then the page goes on from here).
            if found.len() > 1 {
                let (partition, before) = found.pop().map(|f| f.at).unwrap_or((partition, None));
                break Some(Cursor { partition, after: before.as_ref().map(to_key) });
            }
            break Some(Cursor { partition, after: start.as_ref().map(to_key) });
        }
        reads += 1;
        let page_start = start.take();
        // The item a cut goes on after: the last one read, else where this read began.
        let mut last: Option<Item> = page_start.clone();
        let page = trading.active_index_page(&partitions[partition], page_start, INDEX_PAGE_ITEMS).await?;
        for entry in page.entries {
            match entry.record {
                Ok(IndexRecord::Bot(bot)) if states.contains(&bot.state) => {
                    if found.len() == limit {
                        // This bot begins the next page.
                        break 'read Some(Cursor { partition, after: last.as_ref().map(to_key) });
                    }
                    found.push(Found { at: (partition, last.clone()), bot: *bot, paper: Vec::new(), live: Vec::new() });
                }
                // A bot's positions follow it in the index (`<user>#POS#…`).
                Ok(IndexRecord::PaperPosition(p)) => {
                    if let Some(f) = found.last_mut().filter(|f| f.bot.user_id == entry.user_id) {
                        f.paper.push(p);
                    }
                }
                Ok(IndexRecord::LivePosition(p)) => {
                    if let Some(f) = found.last_mut().filter(|f| f.bot.user_id == entry.user_id) {
                        f.live.push(p);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(user_id = %entry.user_id, error = %e, "an index item does not decode; the admin list skips it"),
            }
            last = Some(entry.position);
        }
        match page.next_start {
            Some(after) => start = Some(after),
            None if partition + 1 < partitions.len() => partition += 1,
            None => break None,
        }
    };
    let bots = describe(state, found).await?;
    let next_cursor = next.map(|c| paging::seal(&keys, &scope, &c)).transpose()?;
    Ok(BotsPage { bots, next_cursor })
}

/// The page's bots with their owners' addresses and their positions at the current marks: one
/// BatchGetItem and one marks read for the page.
async fn describe(state: &(impl Table + Bitget), found: Vec<Found>) -> Result<Vec<AdminBot>, ApiError> {
    let users: Vec<_> = found.iter().map(|f| keys::profile(&f.bot.user_id)).collect();
    let symbols: Vec<String> = found
        .iter()
        .flat_map(|f| f.paper.iter().map(|p| p.symbol.clone()).chain(f.live.iter().map(|p| p.symbol.clone())))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let (profiles, marks) = tokio::join!(
        crate::dynamo::batch_get(state.dynamo(), &state.config().table_name, users),
        crate::trading::service::marks(state, &symbols)
    );
    let emails: HashMap<String, String> = profiles?
        .into_iter()
        .filter_map(|item| crate::dynamo::from_item::<crate::auth::store::Profile>(item).ok())
        .map(|p| (p.id, p.email))
        .collect();
    // An operator looking during an outage still sees every bot: a missing mark values the
    // position at its entry (unrealized 0), and says so in the log.
    let marks = marks.unwrap_or_else(|e| {
        tracing::warn!(error = %e.chain(), "marks unavailable; the admin list values positions at their entry");
        HashMap::new()
    });
    let mark = |symbol: &str, entry: Decimal| marks.get(symbol).copied().unwrap_or(entry);
    Ok(found
        .into_iter()
        .map(|f| {
            let positions: Vec<Position> =
                f.paper
                    .iter()
                    .map(|p| crate::trading::paper::position_view(p, mark(&p.symbol, p.entry_price)))
                    .chain(f.live.iter().map(|p| {
                        crate::trading::paper::position_at(&p.symbol, p.side, p.size, p.entry_price, mark(&p.symbol, p.entry_price))
                    }))
                    .collect();
            AdminBot {
                email: emails.get(&f.bot.user_id).cloned(),
                symbol: f.bot.config.symbol.clone(),
                state: f.bot.state,
                exchange: f.bot.exchange,
                unrealized_pnl: positions.iter().map(|p| p.unrealized_pnl).sum::<Decimal>().normalize(),
                positions,
                updated_at: f.bot.updated_at,
                user_id: f.bot.user_id,
            }
        })
        .collect())
}

fn user_not_found() -> ApiError {
    ApiError::NoSuch { code: "user_not_found", detail: "no user has this id" }
}

/// `POST /api/v1/admin/users/{user_id}/bot/stop`: the user's bot stopped as their own stop
/// does (orders canceled, positions closed), each close and the bot's status saying `admin_stop`.
pub async fn stop(state: &(impl Table + Vault + Bitget), user_id: &str) -> Result<StopAnswer, ApiError> {
    // Only ids this service issues reach a key.
    if user_id.len() != 36 || uuid::Uuid::try_parse(user_id).is_err() {
        return Err(user_not_found());
    }
    let snapshot = state.trading_store().snapshot(user_id).await?;
    if snapshot.profile.is_none() {
        return Err(user_not_found());
    }
    bot::stop_answer(state, user_id, snapshot.bot, Some(ADMIN_STOP)).await
}
