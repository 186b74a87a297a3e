//! Channel namespace patterns and the "most specific wins" rule.
//!
//! A pattern is a channel name split on `:` into segments. A `*` segment matches any one
//! non-empty segment; a `*` as the *last* segment matches one or more remaining segments.
//! Every other segment matches itself. Among the patterns that match a channel the most
//! specific wins: an exact name beats any wildcard pattern; then more literal segments win;
//! then more segments. Among equally specific patterns the one declared first wins (e.g.
//! `a:*:c` and `a:b:*` both match `a:b:c`); identical patterns are refused when the
//! configuration is loaded.

use std::cmp::Ordering;

/// A compiled namespace pattern. Deserializes from its text (refused with the reason when it
/// is not a pattern), so a loaded configuration only holds valid ones.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
}

/// Why a pattern is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl TryFrom<String> for Pattern {
    type Error = PatternError;

    fn try_from(text: String) -> Result<Self, PatternError> {
        Self::parse(&text)
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> String {
        p.text
    }
}

impl Pattern {
    /// Parses a pattern such as `chat:*`, `tenant:*:orders` or `lobby`.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let err = |reason| PatternError {
            pattern: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(err("empty"));
        }
        let segments = text
            .split(':')
            .map(|s| match s {
                "" => Err(err("empty segment (`::`, or a leading or trailing `:`)")),
                "*" => Ok(Segment::Any),
                s if s.contains('*') => Err(err("`*` must be a whole segment")),
                s => Ok(Segment::Literal(s.to_owned())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `channel` falls in this namespace.
    pub fn matches(&self, channel: &str) -> bool {
        let mut parts = channel.split(':');
        let last = self.segments.len() - 1;
        for (i, seg) in self.segments.iter().enumerate() {
            let Some(part) = parts.next() else {
                return false;
            };
            match seg {
                Segment::Literal(l) if l != part => return false,
                Segment::Any if part.is_empty() => return false,
                Segment::Any if i == last => return true,
                _ => {}
            }
        }
        parts.next().is_none()
    }

    fn is_exact(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    fn literals(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }

    /// Orders patterns by specificity: `Greater` means `self` is more specific.
    pub fn specificity(&self, other: &Pattern) -> Ordering {
        (self.is_exact(), self.literals(), self.segments.len()).cmp(&(
            other.is_exact(),
            other.literals(),
            other.segments.len(),
        ))
    }
}

/// Picks the most specific of `patterns` that matches `channel`; returns its index.
pub fn most_specific<'a>(
    patterns: impl IntoIterator<Item = &'a Pattern>,
    channel: &str,
) -> Option<usize> {
    let mut best: Option<(usize, &Pattern)> = None;
    for (i, p) in patterns.into_iter().enumerate() {
        if !p.matches(channel) {
            continue;
        }
        match best {
            Some((_, b)) if p.specificity(b) != Ordering::Greater => {}
            _ => best = Some((i, p)),
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn matching_rules() {
        assert!(p("lobby").matches("lobby"));
        assert!(!p("lobby").matches("lobby:1"));
        assert!(p("chat:*").matches("chat:1"));
        assert!(
            p("chat:*").matches("chat:1:thread"),
            "trailing * takes the rest"
        );
        assert!(!p("chat:*").matches("chat"));
        assert!(!p("chat:*").matches("chat:"));
        assert!(p("tenant:*:orders").matches("tenant:acme:orders"));
        assert!(!p("tenant:*:orders").matches("tenant:acme:orders:x"));
        assert!(!p("tenant:*:orders").matches("tenant:acme:billing"));
        assert!(p("*").matches("anything:at:all"));
    }

    #[test]
    fn bad_patterns() {
        for bad in ["", "a::b", ":a", "a:", "a*", "ch*t:x"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn most_specific_wins() {
        let ps = [
            p("*"),
            p("tenant:*"),
            p("tenant:*:orders"),
            p("tenant:acme:orders"),
            p("tenant:acme:*"),
        ];
        assert_eq!(most_specific(&ps, "tenant:acme:orders"), Some(3));
        assert_eq!(most_specific(&ps, "tenant:beta:orders"), Some(2));
        assert_eq!(most_specific(&ps, "tenant:acme:billing"), Some(4));
        assert_eq!(most_specific(&ps, "tenant:beta:billing"), Some(1));
        assert_eq!(most_specific(&ps, "news"), Some(0));
        assert_eq!(most_specific(&ps[1..], "news"), None);
    }
}
