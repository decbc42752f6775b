//! Finds the line of a semantic error. The YAML parser reports lines only
//! for syntax errors; checks that run after parsing know the key path
//! (`workloads[2].node`) and the offending value, and this maps them back to
//! the text: the section, then its N-th list item, then the first line of
//! that item containing the value. Pure and best-effort: `None` when the
//! layout is too unusual to be sure (flow-style lists on one line are found
//! by value alone).

/// 1-based line of `value` under `key` in `text`.
pub fn locate(text: &str, key: &str, value: &str) -> Option<usize> {
    let section_end = key.find(['[', '.']).unwrap_or(key.len());
    let section = &key[..section_end];
    let index: Option<usize> = key[section_end..]
        .strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|n| n.parse().ok());
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| {
        l.strip_prefix(section)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
    })?;
    // The section ends at the next top-level key.
    let end = lines[start + 1..]
        .iter()
        .position(|l| is_top_level_key(l))
        .map_or(lines.len(), |p| start + 1 + p);
    let (from, to) = match index {
        Some(i) => item_span(&lines, start, end, i).unwrap_or((start, end)),
        None => (start, end),
    };
    let needle = value.trim_matches('"');
    if needle.is_empty() {
        return Some(from + 1);
    }
    (from..to)
        .find(|&n| contains_token(lines[n], needle))
        .map(|n| n + 1)
}

fn is_top_level_key(line: &str) -> bool {
    !line.is_empty() && !line.starts_with([' ', '\t', '#', '-']) && line.contains(':')
}

/// Lines `[first, end)` of list item `i` in `lines[start+1..end]`, when the
/// items are block-style (`- ` at a common indentation).
fn item_span(lines: &[&str], start: usize, end: usize, i: usize) -> Option<(usize, usize)> {
    let indent_of = |l: &str| l.len() - l.trim_start().len();
    let first = (start + 1..end).find(|&n| lines[n].trim_start().starts_with("- "))?;
    let indent = indent_of(lines[first]);
    let items: Vec<usize> = (first..end)
        .filter(|&n| indent_of(lines[n]) == indent && lines[n].trim_start().starts_with("- "))
        .collect();
    let begin = *items.get(i)?;
    let finish = items.get(i + 1).copied().unwrap_or(end);
    Some((begin, finish))
}

/// `needle` occurs in `line` as a whole YAML scalar, not inside a longer one.
fn contains_token(line: &str, needle: &str) -> bool {
    let boundary = |c: Option<char>| {
        c.is_none_or(|c| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
    };
    line.match_indices(needle).any(|(at, _)| {
        boundary(line[..at].chars().next_back())
            && boundary(line[at + needle.len()..].chars().next())
    })
}

#[cfg(test)]
mod tests {
    use super::locate;

    const TEXT: &str = "\
nodes:
  - name: node1
    ip: 10.0.0.1
workloads:
  - name: a
    namespace: shop
    ip: 10.1.1.10
    node: node1
  - name: b
    namespace: shop
    ip: 10.1.1.11
    node: node9
  - {name: c, namespace: shop, ip: 10.1.1.1, node: node1}
services: [{name: s, namespace: nope, vip: 10.96.0.1}]
";

    #[test]
    fn table() {
        let cases = [
            ("workloads[1].node", "node9", Some(12)),
            ("workloads[0].ip", "10.1.1.10", Some(7)),
            // 10.1.1.1 is a prefix of 10.1.1.10: whole tokens only.
            ("workloads[2].ip", "10.1.1.1", Some(13)),
            ("services[0].namespace", "nope", Some(14)),
            ("nodes[0].ip", "10.0.0.1", Some(3)),
            ("workloads[1].node", "absent", None),
            ("policies[0].name", "x", None),
        ];
        for (key, value, want) in cases {
            assert_eq!(locate(TEXT, key, value), want, "{key} = {value}");
        }
    }
}
