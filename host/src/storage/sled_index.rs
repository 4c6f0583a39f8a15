//! The sled backend's secondary indexes and counters, and how a listing walks them, so that
//! listing and counting cost the same at a million tasks as at a thousand.
//!
//! A task counts in one *dimension* value per filter it can be listed by: `all`, `status`,
//! `plugin`, `owner`, `ps` (plugin and status), `os` (owner and status) and one `label` per
//! label; each (dimension, value) has an exact counter, written in the same batch as the task.
//! Indexes are kept for the dimensions that hold a status (`status`, `ps`, `os`) and for
//! labels, in creation order, and the `status` ones also by priority and by last update. The
//! index of `all`, `plugin` and `owner` is the union of the seven per-status ones of `status`,
//! `ps` and `os`, walked as one ordered merge ([`super::sled_merge`]): a task's status change
//! then rewrites no index of theirs, and each task stores five index keys fewer.
//!
//! | key | value |
//! | --- | --- |
//! | `i\0{dim}\0{value}\0{created_ms}\0{id}` | (creation order) |
//! | `I\0{field}\0{dim}\0{value}\0{sort key}\0{created_ms}\0{id}` | (`priority`, `updated` order) |
//! | `n\0{dim}\0{value}` | count |
//!
//! A listing picks the smallest index that its filters imply. When nothing else filters and
//! the order is one the index keeps, the page is a key-only range walk (skipping `offset`
//! keys, reading `limit` tasks) and `total` is the counter. Otherwise the tasks of that index
//! are read and the remaining filters applied: the cost follows the smallest filter's size,
//! not the store's.

use std::collections::{BTreeMap, BTreeSet};

use sled::{Batch, Tree};

use super::cells;
use super::cells::CellKey;
use super::codec::decode;
use super::sled_merge::{Merge, Range};
use super::sled_store::{backend, key, prefix, read_u64};
use super::{SortField, StorageError, TaskQuery};
use crate::model::{Task, TaskStatus};

/// Dimensions whose listing can follow the sort fields besides creation (`priority`,
/// `updated`): `status` has those indexes, `all` merges them.
const SORTED_DIMS: [&[u8]; 2] = [b"all", b"status"];

/// A (dimension, value) pair: one index and one counter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Dim {
    name: &'static [u8],
    value: Vec<u8>,
}

fn pair(a: &str, b: &str) -> Vec<u8> {
    key(&[a.as_bytes(), b.as_bytes()])
}

impl Dim {
    /// The stored indexes whose union is this dimension's: itself when it holds a status or
    /// a label, otherwise its per-status dimension for each status.
    fn parts(&self) -> Vec<Dim> {
        let per_status: &'static [u8] = match self.name {
            b"all" => b"status",
            b"plugin" => b"ps",
            b"owner" => b"os",
            _ => return vec![self.clone()],
        };
        TaskStatus::ALL
            .into_iter()
            .map(|status| Dim {
                name: per_status,
                value: if self.name == b"all" {
                    status.as_str().as_bytes().to_vec()
                } else {
                    key(&[&self.value, status.as_str().as_bytes()])
                },
            })
            .collect()
    }

    /// Whether this dimension has index keys of its own.
    fn stored(&self) -> bool {
        !matches!(self.name, b"all" | b"plugin" | b"owner")
    }
}

fn dims(task: &Task) -> Vec<Dim> {
    let status = task.status.as_str();
    let mut dims = vec![
        Dim {
            name: b"all",
            value: Vec::new(),
        },
        Dim {
            name: b"status",
            value: status.as_bytes().to_vec(),
        },
        Dim {
            name: b"plugin",
            value: task.plugin.as_bytes().to_vec(),
        },
        Dim {
            name: b"owner",
            value: task.owner.as_bytes().to_vec(),
        },
        Dim {
            name: b"ps",
            value: pair(&task.plugin, status),
        },
        Dim {
            name: b"os",
            value: pair(&task.owner, status),
        },
    ];
    for (k, v) in &task.labels {
        dims.push(Dim {
            name: b"label",
            value: format!("{k}={v}").into_bytes(),
        });
    }
    dims
}

fn priority_key(task: &Task) -> [u8; 4] {
    // Flipping the sign bit makes byte order numeric order for i32.
    ((task.priority as u32) ^ 0x8000_0000).to_be_bytes()
}

fn created_ms(task: &Task) -> [u8; 8] {
    (task.created_at.timestamp_millis().max(0) as u64).to_be_bytes()
}

/// Every index entry of `task`.
pub(super) fn index_keys(task: &Task) -> BTreeSet<Vec<u8>> {
    let created = created_ms(task);
    let id = task.id.as_bytes();
    let updated = (task.updated_at.timestamp_millis().max(0) as u64).to_be_bytes();
    let priority = priority_key(task);
    let mut keys = BTreeSet::new();
    for dim in dims(task).into_iter().filter(Dim::stored) {
        keys.insert(key(&[b"i", dim.name, &dim.value, &created, id]));
        if dim.name == b"status" {
            keys.insert(key(&[
                b"I",
                b"priority",
                dim.name,
                &dim.value,
                &priority,
                &created,
                id,
            ]));
            keys.insert(key(&[
                b"I", b"updated", dim.name, &dim.value, &updated, &created, id,
            ]));
        }
    }
    keys
}

fn counter_key(dim: &Dim) -> Vec<u8> {
    key(&[b"n", dim.name, &dim.value])
}

/// The counters `task` adds one to.
pub(super) fn counter_keys(task: &Task) -> BTreeSet<Vec<u8>> {
    dims(task).iter().map(counter_key).collect()
}

/// Tasks in `status` now.
pub(super) fn status_count(tree: &Tree, status: TaskStatus) -> Result<u64, StorageError> {
    let dim = Dim {
        name: b"status",
        value: status.as_str().as_bytes().to_vec(),
    };
    Ok(read_u64(tree.get(counter_key(&dim)).map_err(backend)?))
}

/// (last update in ms, id) of the tasks in `status`, oldest update first.
pub(super) fn by_update(
    tree: &Tree,
    status: TaskStatus,
) -> impl Iterator<Item = Result<(u64, String), StorageError>> {
    let scan = prefix(&[b"I", b"updated", b"status", status.as_str().as_bytes()]);
    let skip = scan.len() + 8 + 1 + 9;
    let at = scan.len();
    tree.scan_prefix(scan).keys().map(move |k| {
        let k = k.map_err(backend)?;
        let updated = k
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_be_bytes);
        Ok((updated, id_in(&k, skip)?))
    })
}

/// The counter prefix under which `ps` counts (plugin, status) pairs.
pub(super) fn plugin_status_counters() -> Vec<u8> {
    prefix(&[b"n", b"ps"])
}

/// Key prefixes of every index, counter and statistics cell, for a rebuild.
pub(super) const DERIVED_PREFIXES: [&[u8]; 5] = [b"i\0", b"I\0", b"n\0", b"c\0", b"s\0"];

/// `s\0{owner}\0{plugin}\0{project}\0{agent}\0{day}`, each label as `={value}` or empty for
/// none.
pub(super) fn cell_key(cell: &CellKey) -> Vec<u8> {
    let label = |value: &Option<String>| {
        value
            .as_ref()
            .map_or_else(Vec::new, |v| format!("={v}").into_bytes())
    };
    key(&[
        b"s",
        cell.owner.as_bytes(),
        cell.plugin.as_bytes(),
        &label(&cell.project),
        &label(&cell.agent),
        cell.day.as_bytes(),
    ])
}

pub(super) fn parse_cell_key(k: &[u8]) -> Option<CellKey> {
    let mut parts = k.split(|b| *b == 0).skip(1);
    let text = |part: Option<&[u8]>| part.and_then(|p| String::from_utf8(p.to_vec()).ok());
    let label =
        |part: Option<&[u8]>| text(part).map(|value| value.strip_prefix('=').map(str::to_owned));
    let owner = text(parts.next())?;
    let plugin = text(parts.next())?;
    let project = label(parts.next())?;
    let agent = label(parts.next())?;
    let day = text(parts.next())?;
    Some(CellKey {
        owner,
        plugin,
        project,
        agent,
        day,
    })
}

/// The scan prefix of the cells of `owner`, or of all.
pub(super) fn cells_prefix(owner: Option<&str>) -> Vec<u8> {
    match owner {
        Some(owner) => prefix(&[b"s", owner.as_bytes()]),
        None => prefix(&[b"s"]),
    }
}

/// Layout version of the derived keys (indexes, counters, cells).
const SCHEMA_VERSION: [u8; 1] = [4];

/// Rebuilds every index and counter from the tasks when the stored layout is older than
/// this build's (a store written before the counters existed).
pub(super) fn rebuild_if_older(main: &Tree) -> Result<(), StorageError> {
    let version = key(&[b"m", b"schema"]);
    if main.get(&version).map_err(backend)?.as_deref() == Some(&SCHEMA_VERSION[..]) {
        return Ok(());
    }
    for derived in DERIVED_PREFIXES {
        let mut batch = Batch::default();
        for k in main.scan_prefix(derived).keys() {
            batch.remove(k.map_err(backend)?);
        }
        main.apply_batch(batch).map_err(backend)?;
    }
    let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut cell_counts: BTreeMap<Vec<u8>, cells::CellCounts> = BTreeMap::new();
    let mut batch = Batch::default();
    for value in main.scan_prefix(prefix(&[b"t"])).values() {
        let task: Task = decode(&value.map_err(backend)?)?;
        for (cell, delta) in cells::changes(None, Some(&task)) {
            cell_counts
                .entry(cell_key(&cell))
                .or_default()
                .apply(&delta);
        }
        for index in index_keys(&task) {
            batch.insert(index, &[][..]);
        }
        for counter in counter_keys(&task) {
            *counts.entry(counter).or_default() += 1;
        }
    }
    for (counter, n) in counts {
        batch.insert(counter, &n.to_be_bytes()[..]);
    }
    for (cell, counts) in cell_counts {
        batch.insert(cell, counts.encode());
    }
    batch.insert(version, &SCHEMA_VERSION[..]);
    main.apply_batch(batch).map_err(backend)?;
    main.flush().map_err(backend)?;
    Ok(())
}

/// How a listing reads the store.
struct Plan {
    dim: Dim,
    /// Whether filters beyond the dimension (and `created` bounds) remain to apply.
    residual: bool,
}

/// The filters of `query` as dimensions, and whether something else filters too.
fn plan(tree: &Tree, query: &TaskQuery) -> Result<Plan, StorageError> {
    let status = query.status.map(|s| s.as_str());
    // A single-plugin scope is a plugin filter.
    let plugin = query.plugin.as_deref().or(match query.plugins.as_deref() {
        Some([only]) => Some(only.as_str()),
        _ => None,
    });
    let owner = query.owner.as_deref();
    let mut candidates: Vec<(Dim, bool)> = Vec::new();
    let extra_labels = !query.labels.is_empty();
    let wide_scope = query.plugins.as_ref().is_some_and(|p| p.len() > 1);
    let other = query.task_type.is_some() || wide_scope;
    // The combined dimensions, each with whether a filter outside it remains.
    let combined = [
        (&b"ps"[..], plugin, owner.is_some()),
        (&b"os"[..], owner, plugin.is_some()),
    ];
    for (name, first, outside) in combined {
        if let (Some(first), Some(status)) = (first, status) {
            let value = pair(first, status);
            candidates.push((Dim { name, value }, outside || extra_labels || other));
        }
    }
    let filters = status.is_some() as usize
        + plugin.is_some() as usize
        + owner.is_some() as usize
        + query.labels.len();
    let alone = filters == 1 && !other;
    let single: Vec<(&'static [u8], Vec<u8>)> = [
        status.map(|s| (&b"status"[..], s.as_bytes().to_vec())),
        plugin.map(|p| (&b"plugin"[..], p.as_bytes().to_vec())),
        owner.map(|o| (&b"owner"[..], o.as_bytes().to_vec())),
    ]
    .into_iter()
    .flatten()
    .chain(
        query
            .labels
            .iter()
            .map(|(k, v)| (&b"label"[..], format!("{k}={v}").into_bytes())),
    )
    .collect();
    for (name, value) in single {
        candidates.push((Dim { name, value }, !alone));
    }
    let mut best: Option<(u64, Plan)> = None;
    for (dim, residual) in candidates {
        let size = read_u64(tree.get(counter_key(&dim)).map_err(backend)?);
        if best.as_ref().is_none_or(|(smallest, _)| size < *smallest) {
            best = Some((size, Plan { dim, residual }));
        }
    }
    Ok(best.map_or(
        Plan {
            dim: Dim {
                name: b"all",
                value: Vec::new(),
            },
            residual: other,
        },
        |(_, plan)| plan,
    ))
}

fn id_in(key: &[u8], at: usize) -> Result<String, StorageError> {
    String::from_utf8(key.get(at..).unwrap_or_default().to_vec()).map_err(backend)
}

/// The page `query` asks for and how many tasks match, reading tasks with `load`.
pub(super) fn list(
    tree: &Tree,
    query: &TaskQuery,
    load: impl Fn(&str) -> Result<Option<Task>, StorageError>,
) -> Result<(Vec<Task>, u64), StorageError> {
    let plan = plan(tree, query)?;
    let parts = plan.dim.parts();
    let ranged = query.created_after.is_some() || query.created_before.is_some();
    let sort_indexed = query.sort == SortField::CreatedAt || SORTED_DIMS.contains(&plan.dim.name);
    if !plan.residual && !ranged && sort_indexed {
        // Where the id starts in a key's suffix: after the sort key, if any, and creation.
        let (field, id_at): (Option<&[u8]>, usize) = match query.sort {
            SortField::CreatedAt => (None, 9),
            SortField::Priority => (Some(b"priority"), 4 + 1 + 9),
            SortField::UpdatedAt => (Some(b"updated"), 8 + 1 + 9),
        };
        let ranges = parts
            .iter()
            .map(|part| {
                Range::whole(match field {
                    None => prefix(&[b"i", part.name, &part.value]),
                    Some(field) => prefix(&[b"I", field, part.name, &part.value]),
                })
            })
            .collect();
        let mut page = Vec::with_capacity(query.limit.min(1000));
        for suffix in Merge::new(tree, ranges, query.ascending)
            .skip(query.offset)
            .take(query.limit)
        {
            if let Some(task) = load(&id_in(&suffix?, id_at)?)? {
                page.push(task);
            }
        }
        let total = read_u64(tree.get(counter_key(&plan.dim)).map_err(backend)?);
        return Ok((page, total));
    }

    // Read the tasks of the chosen index (within the creation bounds) and filter them.
    let bound = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis().max(0) as u64;
    let from = query.created_after.map(|t| bound(t).to_be_bytes().to_vec());
    let until = query
        .created_before
        .map(|t| bound(t).saturating_add(1).to_be_bytes().to_vec());
    let ranges = parts
        .iter()
        .map(|part| Range {
            prefix: prefix(&[b"i", part.name, &part.value]),
            from: from.clone(),
            until: until.clone(),
        })
        .collect();
    let keys = Merge::new(
        tree,
        ranges,
        query.ascending || query.sort != SortField::CreatedAt,
    );
    let by_created = query.sort == SortField::CreatedAt;
    let mut total = 0u64;
    let mut page = Vec::new();
    let mut matching = Vec::new();
    for suffix in keys {
        let Some(task) = load(&id_in(&suffix?, 9)?)? else {
            continue;
        };
        if !query.matches(&task) {
            continue;
        }
        if by_created {
            if total as usize >= query.offset && page.len() < query.limit {
                page.push(task);
            }
        } else {
            matching.push(task);
        }
        total += 1;
    }
    if !by_created {
        match query.sort {
            SortField::UpdatedAt => matching.sort_by(|a, b| {
                (a.updated_at, a.created_at, &a.id).cmp(&(b.updated_at, b.created_at, &b.id))
            }),
            SortField::Priority => matching.sort_by(|a, b| {
                (a.priority, a.created_at, &a.id).cmp(&(b.priority, b.created_at, &b.id))
            }),
            SortField::CreatedAt => {}
        }
        if !query.ascending {
            matching.reverse();
        }
        page = matching
            .into_iter()
            .skip(query.offset)
            .take(query.limit)
            .collect();
    }
    Ok((page, total))
}
