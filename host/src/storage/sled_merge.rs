//! Several key ranges of one tree walked as if they were one index, in the order of the keys'
//! suffixes (what follows each range's prefix). The indexes of `all`, `plugin` and `owner` are
//! the union of seven per-status ones (see [`super::sled_index`]); a merge of seven key-only
//! range scans is what a listing of them reads, so a page costs `offset + limit` steps of at
//! most seven iterators, whatever the store's size.

use sled::{IVec, Tree};

use super::StorageError;
use super::sled_store::backend;

/// One range of a merge: the keys under `prefix` whose suffix lies in `[from, until)`.
pub(super) struct Range {
    pub prefix: Vec<u8>,
    /// The lowest suffix, inclusive; `None`: from the start of the prefix.
    pub from: Option<Vec<u8>>,
    /// The suffix bound, exclusive; `None`: to the end of the prefix.
    pub until: Option<Vec<u8>>,
}

impl Range {
    pub fn whole(prefix: Vec<u8>) -> Self {
        Self {
            prefix,
            from: None,
            until: None,
        }
    }
}

struct Part {
    keys: Box<dyn Iterator<Item = sled::Result<IVec>>>,
    skip: usize,
    /// The next key of this range, read ahead.
    head: Option<IVec>,
    /// Whether `head` holds the key after the last one taken.
    fresh: bool,
}

/// The merged walk: suffixes in ascending or descending order.
pub(super) struct Merge {
    parts: Vec<Part>,
    ascending: bool,
}

impl Merge {
    pub fn new(tree: &Tree, ranges: Vec<Range>, ascending: bool) -> Self {
        let parts = ranges
            .into_iter()
            .map(|range| {
                let mut from = range.prefix.clone();
                from.extend(range.from.unwrap_or_default());
                let mut until = range.prefix.clone();
                match range.until {
                    Some(bound) => until.extend(bound),
                    // Everything under the prefix: its trailing \0 bumped to \x01.
                    None => {
                        if let Some(last) = until.last_mut() {
                            *last = 1;
                        }
                    }
                }
                let keys = tree.range(from..until).keys();
                let keys: Box<dyn Iterator<Item = sled::Result<IVec>>> = if ascending {
                    Box::new(keys)
                } else {
                    Box::new(keys.rev())
                };
                Part {
                    keys,
                    skip: range.prefix.len(),
                    head: None,
                    fresh: false,
                }
            })
            .collect();
        Self { parts, ascending }
    }
}

impl Iterator for Merge {
    /// A key's suffix after its range's prefix.
    type Item = Result<Vec<u8>, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        for part in &mut self.parts {
            if !part.fresh {
                part.fresh = true;
                part.head = match part.keys.next().transpose() {
                    Ok(head) => head,
                    Err(e) => return Some(Err(backend(e))),
                };
            }
        }
        fn suffix(part: &Part) -> Option<&[u8]> {
            part.head.as_ref().map(|k| &k[part.skip.min(k.len())..])
        }
        let mut best: Option<usize> = None;
        for (at, part) in self.parts.iter().enumerate() {
            let Some(candidate) = suffix(part) else {
                continue;
            };
            let wins = best
                .and_then(|b| suffix(&self.parts[b]))
                .is_none_or(|current| {
                    if self.ascending {
                        candidate < current
                    } else {
                        candidate > current
                    }
                });
            if wins {
                best = Some(at);
            }
        }
        let part = &mut self.parts[best?];
        part.fresh = false;
        let taken = suffix(part).map(<[u8]>::to_vec);
        taken.map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_in_suffix_order_both_ways_within_their_bounds() {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .expect("temporary sled");
        let tree = db.open_tree("t").expect("tree");
        for (prefix, suffixes) in [("a\0", ["1", "4", "7"]), ("b\0", ["2", "3", "9"])] {
            for suffix in suffixes {
                tree.insert(format!("{prefix}{suffix}"), &[])
                    .expect("insert");
            }
        }
        tree.insert("c\0", &[])
            .expect("a key outside both prefixes");
        let walk = |ascending: bool, from: Option<&str>, until: Option<&str>| -> String {
            let ranges = ["a\0", "b\0"]
                .into_iter()
                .map(|p| Range {
                    prefix: p.as_bytes().to_vec(),
                    from: from.map(|f| f.as_bytes().to_vec()),
                    until: until.map(|u| u.as_bytes().to_vec()),
                })
                .collect();
            Merge::new(&tree, ranges, ascending)
                .map(|s| String::from_utf8(s.expect("key")).expect("utf-8"))
                .collect()
        };
        assert_eq!(walk(true, None, None), "123479");
        assert_eq!(walk(false, None, None), "974321");
        assert_eq!(walk(true, Some("3"), Some("8")), "347");
        assert_eq!(walk(false, Some("2"), Some("9")), "7432");
    }
}
