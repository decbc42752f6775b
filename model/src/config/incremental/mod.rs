//! Re-parsing the config file after an edit without re-parsing what did
//! not change. A 10,000-workload file is ~1.2 MB of YAML, and parsing it
//! whole costs ~200 ms; an edit usually touches one list item.
//!
//! The text is cut into its top-level sections (a key at column 0), and a
//! section holding a block-style list (`workloads:` then `  - ...` items)
//! into its items. Each piece is parsed on its own with the same model and
//! cached by its exact text, so the next parse only parses pieces whose
//! text is new. Scalars, flow-style lists (`nodes: [...]`) and anything
//! else are one piece per section, cached the same way.
//!
//! The result equals [`super::parse`]'s, which stays the reference:
//! - a layout the cutter is not sure about (a document marker, a
//!   directive, a key that is not a plain word at column 0, a duplicate
//!   section, an item indented unevenly) is parsed whole;
//! - a piece that fails on its own (a syntax error, or an alias whose
//!   anchor is in another piece) makes the whole text be parsed again, so
//!   errors are reported exactly as before (line and reason);
//! - cutting happens only at lines that YAML cannot read as the inside of
//!   a quoted, flow or block scalar that is still open: a cut through one
//!   leaves the first piece unterminated, which fails, and falls back.
//!
//! The checks after parsing (names, IPs, references) and the snapshot
//! build still run over the whole file.

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use serde::de::DeserializeOwned;

use super::model::{File, NamespaceDoc, NodeDoc, PolicyDoc, ServiceDoc, WorkloadDoc};
use super::route_doc::RouteDoc;
use super::{parse, ConfigError};
use crate::state::Snapshot;

/// Parses successive versions of one config file, reusing the pieces that
/// did not change. Holds the parsed pieces of the last version only.
#[derive(Debug, Default)]
pub struct IncrementalParser {
    sections: Cache<File>,
    nodes: Cache<NodeDoc>,
    namespaces: Cache<NamespaceDoc>,
    workloads: Cache<WorkloadDoc>,
    services: Cache<ServiceDoc>,
    policies: Cache<PolicyDoc>,
    routes: Cache<RouteDoc>,
    stats: ParseStats,
}

/// What the last [`IncrementalParser::parse`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParseStats {
    /// Pieces parsed because their text was new.
    pub parsed: usize,
    /// Pieces taken from the previous version.
    pub reused: usize,
    /// The text was parsed whole (an unusual layout, or an error).
    pub whole: bool,
}

impl IncrementalParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `text` into a snapshot: the same result as
    /// [`super::parse`], errors included.
    pub fn parse(&mut self, text: &str) -> Result<Snapshot, ConfigError> {
        self.stats = ParseStats::default();
        match self.file(text) {
            Some(file) => super::build(file, text),
            None => {
                self.stats.whole = true;
                parse(text)
            }
        }
    }

    /// Parses `text` into keyed objects: the same result as
    /// [`super::parse_objects`], errors included.
    pub fn parse_objects(&mut self, text: &str) -> Result<super::Objects, ConfigError> {
        self.stats = ParseStats::default();
        match self.file(text) {
            Some(file) => super::objects(file, text),
            None => {
                self.stats.whole = true;
                super::parse_objects(text)
            }
        }
    }

    /// What the last call to [`IncrementalParser::parse`] did.
    pub fn stats(&self) -> ParseStats {
        self.stats
    }

    /// The document model of `text` from its pieces; `None` when it must be
    /// parsed whole.
    fn file(&mut self, text: &str) -> Option<File> {
        let sections = split(text)?;
        let mut file = File::default();
        let stats = &mut self.stats;
        for s in sections {
            match s.items {
                Some(items) => match s.key {
                    "nodes" => file.nodes = self.nodes.docs(&items, stats)?,
                    "namespaces" => file.namespaces = self.namespaces.docs(&items, stats)?,
                    "workloads" => file.workloads = self.workloads.docs(&items, stats)?,
                    "services" => file.services = self.services.docs(&items, stats)?,
                    "policies" => file.policies = self.policies.docs(&items, stats)?,
                    "routes" => file.routes = self.routes.docs(&items, stats)?,
                    _ => return None,
                },
                None => {
                    let one = self.sections.one(s.text, stats)?;
                    match s.key {
                        "trustDomain" => file.trust_domain = one.trust_domain,
                        "rootNamespace" => file.root_namespace = one.root_namespace,
                        "nodes" => file.nodes = one.nodes,
                        "namespaces" => file.namespaces = one.namespaces,
                        "workloads" => file.workloads = one.workloads,
                        "services" => file.services = one.services,
                        "policies" => file.policies = one.policies,
                        "routes" => file.routes = one.routes,
                        // The whole parse names the unknown key.
                        _ => return None,
                    }
                }
            }
        }
        Some(file)
    }
}

/// Parsed pieces by their exact text.
#[derive(Debug)]
struct Cache<T> {
    by_text: HashMap<Box<str>, T>,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            by_text: HashMap::new(),
        }
    }
}

/// One piece on its own; any error means "parse the whole text".
fn from_yaml<T: DeserializeOwned>(text: &str) -> Option<T> {
    serde_yaml_ng::from_str(text).ok()
}

impl<T: Clone> Cache<T> {
    /// The docs of `pieces` in order, parsing only texts not in the cache,
    /// which afterwards holds exactly these pieces. `None` if one fails.
    fn docs_with(
        &mut self,
        pieces: &[&str],
        stats: &mut ParseStats,
        parse_one: impl Fn(&str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let mut old = std::mem::take(&mut self.by_text);
        self.by_text.reserve(pieces.len());
        let mut out = Vec::with_capacity(pieces.len());
        for &p in pieces {
            if let Some(doc) = self.by_text.get(p) {
                // The same text twice in one file.
                stats.reused += 1;
                out.push(doc.clone());
            } else if let Some((key, doc)) = old.remove_entry(p) {
                stats.reused += 1;
                out.push(doc.clone());
                self.by_text.insert(key, doc);
            } else if let Some(doc) = parse_one(p) {
                stats.parsed += 1;
                out.push(doc.clone());
                self.by_text.insert(p.into(), doc);
            } else {
                // Keep what was cached for the next, fixed version.
                self.by_text.extend(old);
                return None;
            }
        }
        Some(out)
    }
}

impl<T: DeserializeOwned + Clone> Cache<T> {
    /// Block-list items: each text is a one-item YAML list.
    fn docs(&mut self, items: &[&str], stats: &mut ParseStats) -> Option<Vec<T>> {
        self.docs_with(items, stats, |text| {
            let mut v: Vec<T> = from_yaml(text)?;
            (v.len() == 1).then(|| v.pop()).flatten()
        })
    }
}

impl Cache<File> {
    /// A whole section, parsed as a document of that one key. The cache
    /// keeps every section seen in this version (one call per section).
    fn one(&mut self, text: &str, stats: &mut ParseStats) -> Option<File> {
        if let Some(f) = self.by_text.get(text) {
            stats.reused += 1;
            return Some(f.clone());
        }
        let f: File = from_yaml(text)?;
        stats.parsed += 1;
        // Sections are few; bound the cache so edits cannot grow it.
        if self.by_text.len() > 64 {
            self.by_text.clear();
        }
        self.by_text.insert(text.into(), f.clone());
        Some(f)
    }
}

/// One top-level section: `key:` at column 0 through the line before the
/// next one.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Section<'a> {
    pub key: &'a str,
    pub text: &'a str,
    /// The items of a block-style list, each from its `- ` line to the
    /// next; `None` when the section is one piece.
    pub items: Option<Vec<&'a str>>,
}

/// Cuts `text` into sections, or `None` when the layout is not one whose
/// cut is sure to mean the same as the whole.
pub(super) fn split(text: &str) -> Option<Vec<Section<'_>>> {
    // (key, start offset) of each section header.
    let mut heads: Vec<(&str, usize)> = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let content = line.trim_end_matches(['\n', '\r']);
        let trimmed = content.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match content.as_bytes().first() {
            // Inside a section (a nested line, or an item of a list at
            // column 0); before the first section the document is not a
            // plain mapping.
            Some(b' ' | b'-') if !heads.is_empty() => {}
            Some(c) if c.is_ascii_alphabetic() => {
                let key = header_key(content)?;
                if heads.iter().any(|(k, _)| *k == key) {
                    return None;
                }
                heads.push((key, start));
            }
            _ => return None,
        }
    }
    let mut sections = Vec::with_capacity(heads.len());
    for (i, &(key, start)) in heads.iter().enumerate() {
        let end = heads.get(i + 1).map_or(text.len(), |h| h.1);
        let section = &text[start..end];
        sections.push(Section {
            key,
            text: section,
            items: block_items(section),
        });
    }
    Some(sections)
}

/// The key of a `key:` line whose key is a plain word; `None` otherwise.
fn header_key(line: &str) -> Option<&str> {
    let colon = line.find(':')?;
    let key = &line[..colon];
    let after = &line[colon + 1..];
    let word = key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let separated = after.is_empty() || after.starts_with([' ', '\t']);
    (word && separated).then_some(key)
}

/// The items of a section whose value is a block-style list: a header with
/// nothing after the colon but a comment, then `- ` lines at one
/// indentation, each followed only by lines indented deeper (or blank, or
/// comments). `None` for any other shape.
fn block_items(section: &str) -> Option<Vec<&str>> {
    let mut lines = section.split_inclusive('\n');
    let header = lines.next()?;
    let rest = header.split_once(':')?.1.trim();
    if !(rest.is_empty() || rest.starts_with('#')) {
        return None;
    }
    let mut offset = header.len();
    let mut starts = Vec::new();
    let mut indent = None;
    for line in lines {
        let start = offset;
        offset += line.len();
        let content = line.trim_end_matches(['\n', '\r']);
        let body = content.trim_start_matches(' ');
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let n = content.len() - body.len();
        let item = body == "-" || body.starts_with("- ");
        match indent {
            None if item => indent = Some(n),
            Some(i) if n == i && item => {}
            Some(i) if n > i => continue,
            _ => return None,
        }
        starts.push(start);
    }
    if starts.is_empty() {
        return None;
    }
    let items = starts
        .iter()
        .enumerate()
        .map(|(i, &s)| &section[s..starts.get(i + 1).copied().unwrap_or(section.len())])
        .collect();
    Some(items)
}
