//! Maps a config path such as `routes[2].match.path_regex` to its line and column in the
//! file, so semantic errors found after serde can still point at `file:line:col`.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Default)]
pub struct Locator {
    values: HashMap<String, Pos>,
    /// Keys that appear twice in one mapping: (path of the second one, its position).
    /// A repeated key's path, where it is repeated and where it first appears.
    pub duplicates: Vec<(String, Pos, Pos)>,
    /// The text has a YAML merge key (`<<: *anchor`) or a top-level `x-` key (where
    /// anchors are kept): serde reads it only after the merge is applied.
    pub needs_merge: bool,
}

impl Locator {
    /// Indexes every node of the document; a text that does not parse yields an empty index
    /// (serde reports the syntax error itself).
    pub fn new(text: &str) -> Self {
        let mut builder = Builder::default();
        let _ = Parser::new_from_str(text).load(&mut builder, false);
        builder.resolve_aliases();
        let needs_merge = builder.values.keys().any(|k| {
            k.starts_with("x-") || k.ends_with(".<<") || k.contains(".<<[") || k.starts_with("<<")
        });
        Locator {
            values: builder.values,
            duplicates: builder.duplicates,
            needs_merge,
        }
    }

    /// Whether the file has a node at `path`.
    pub fn has(&self, path: &str) -> bool {
        self.values.contains_key(path)
    }

    /// Position of the node at `path`, or of its nearest ancestor that exists in the file.
    pub fn find(&self, path: &str) -> Pos {
        let mut path = path;
        loop {
            if let Some(pos) = self.values.get(path) {
                return *pos;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None => {
                    return self
                        .values
                        .get("")
                        .copied()
                        .unwrap_or(Pos { line: 1, col: 1 })
                }
            }
        }
    }
}

enum Frame {
    Map {
        key: Option<String>,
        seen: HashMap<String, Pos>,
    },
    Seq {
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    values: HashMap<String, Pos>,
    duplicates: Vec<(String, Pos, Pos)>,
    frames: Vec<(String, Frame)>,
    /// Anchor id → the path of the node it names.
    anchors: HashMap<usize, String>,
    /// Where each alias is used, and its anchor id, in document order.
    aliases: Vec<(String, usize)>,
}

impl Builder {
    /// What an alias (or a merge key) brings in is located where its anchor wrote it: a
    /// merged route's bad field points at the line of the shared definition. Keys the
    /// mapping writes itself win, as they do in the merge.
    fn resolve_aliases(&mut self) {
        for (used_at, id) in std::mem::take(&mut self.aliases) {
            let Some(source) = self.anchors.get(&id).filter(|s| !s.is_empty()).cloned() else {
                continue;
            };
            let target = match used_at
                .find(".<<")
                .or(used_at.starts_with("<<").then_some(0))
            {
                Some(cut) => used_at[..cut].to_string(),
                None => used_at.clone(),
            };
            let copied: Vec<(String, Pos)> = self
                .values
                .iter()
                .filter_map(|(k, pos)| {
                    let rest = k.strip_prefix(source.as_str())?;
                    if !rest.starts_with(['.', '[']) {
                        return None;
                    }
                    let rest = if target.is_empty() {
                        rest.trim_start_matches('.')
                    } else {
                        rest
                    };
                    Some((format!("{target}{rest}"), *pos))
                })
                .collect();
            for (k, pos) in copied {
                self.values.entry(k).or_insert(pos);
            }
        }
    }
}

impl Builder {
    /// Path of the node that starts now, or None when it is a mapping key.
    fn node_path(&mut self, ev: &Event) -> Option<String> {
        let Some((base, frame)) = self.frames.last_mut() else {
            return Some(String::new());
        };
        match frame {
            Frame::Map { key, .. } => match key.take() {
                Some(k) if base.is_empty() => Some(k),
                Some(k) => Some(format!("{base}.{k}")),
                None => {
                    *key = Some(match ev {
                        Event::Scalar(s, ..) => s.clone(),
                        _ => String::new(),
                    });
                    None
                }
            },
            Frame::Seq { next } => {
                *next += 1;
                Some(format!("{base}[{}]", *next - 1))
            }
        }
    }
}

impl Builder {
    /// A block mapping is located at its first key (its own marker points past it); a key
    /// seen before in the same mapping is recorded as a duplicate.
    fn on_key(&mut self, ev: &Event, pos: Pos) {
        let Some((base, Frame::Map { seen, .. })) = self.frames.last_mut() else {
            return;
        };
        self.values.entry(base.clone()).or_insert(pos);
        if let Event::Scalar(k, ..) = ev {
            if let Some(first) = seen.get(k) {
                let path = if base.is_empty() {
                    k.clone()
                } else {
                    format!("{base}.{k}")
                };
                self.duplicates.push((path, pos, *first));
            } else {
                seen.insert(k.clone(), pos);
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(..)
            | Event::Alias(_)
            | Event::MappingStart(..)
            | Event::SequenceStart(..) => {
                let pos = Pos {
                    line: mark.line(),
                    col: mark.col() + 1,
                };
                let Some(path) = self.node_path(&ev) else {
                    self.on_key(&ev, pos);
                    return;
                };
                if !matches!(ev, Event::MappingStart(..)) {
                    self.values.entry(path.clone()).or_insert(pos);
                }
                match &ev {
                    Event::Alias(id) => self.aliases.push((path.clone(), *id)),
                    Event::Scalar(_, _, id, _)
                    | Event::MappingStart(id, _)
                    | Event::SequenceStart(id, _)
                        if *id != 0 =>
                    {
                        self.anchors.insert(*id, path.clone());
                    }
                    _ => {}
                }
                match ev {
                    Event::MappingStart(..) => self.frames.push((
                        path,
                        Frame::Map {
                            key: None,
                            seen: HashMap::new(),
                        },
                    )),
                    Event::SequenceStart(..) => self.frames.push((path, Frame::Seq { next: 0 })),
                    _ => {}
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.frames.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_values_and_falls_back_to_parents() {
        let text = "version: 1\nroutes:\n  - name: a\n    match: { path: /x }\n  - name: b\n";
        let loc = Locator::new(text);
        assert_eq!(loc.find("version"), Pos { line: 1, col: 10 });
        assert_eq!(loc.find("routes[0].match.path"), Pos { line: 4, col: 20 });
        assert_eq!(loc.find("routes[1].name"), Pos { line: 5, col: 11 });
        assert_eq!(loc.find("routes[1].upstream"), Pos { line: 5, col: 5 });
        assert!(loc.duplicates.is_empty());
    }

    #[test]
    fn merged_keys_are_located_where_their_anchor_wrote_them() {
        let text = "x-api: &api\n  auth: jwt\n  cors: web\nroutes:\n  - name: a\n    <<: *api\n    cors: other\n  - { name: b, <<: [*api] }\n";
        let loc = Locator::new(text);
        assert!(loc.needs_merge);
        assert_eq!(loc.find("routes[0].auth"), Pos { line: 2, col: 9 });
        assert_eq!(loc.find("routes[0].cors"), Pos { line: 7, col: 11 });
        assert_eq!(loc.find("routes[1].cors"), Pos { line: 3, col: 9 });
        assert!(!Locator::new("routes: []\n").needs_merge);
    }

    #[test]
    fn records_duplicate_keys() {
        let loc = Locator::new("a: 1\nb:\n  c: 1\n  c: 2\n");
        assert_eq!(
            loc.duplicates,
            vec![(
                "b.c".to_string(),
                Pos { line: 4, col: 3 },
                Pos { line: 3, col: 3 }
            )]
        );
    }
}
