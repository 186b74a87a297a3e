//! `redact`: masks e-mail addresses and card-like numbers in published messages.
//!
//! Every string value inside the JSON payload (at any depth; object keys are left alone) is
//! scanned for
//!
//! * e-mail addresses: `local@domain.tld`, local part `[A-Za-z0-9._%+-]`, domain labels
//!   `[A-Za-z0-9-]` with a final alphabetic label of 2+ letters;
//! * card-like numbers: 13 to 19 digits, optionally split by single spaces or dashes
//!   (`4111 1111 1111 1111`, `4111-1111-1111-1111`), not glued to letters or other digits.
//!
//! Each match is replaced by the mask. If anything changed the redacted message is forwarded
//! to its own channel; otherwise the publish passes unchanged (and, when the raw text cannot
//! contain a match, without being parsed at all). A payload too deeply nested to parse is
//! rejected rather than passed unscanned.
//!
//! Config (all optional): `{"mask": "[redacted]", "luhn": false}`; with `"luhn": true` only
//! numbers passing the Luhn checksum count as cards.

use serde::Deserialize;
use switchyard_plugin_sdk::serde;
use switchyard_plugin_sdk::serde_json::Value;
use switchyard_plugin_sdk::{Identity, Outgoing, Plugin, PublishDecision, export_plugin, json};

/// Binding configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "switchyard_plugin_sdk::serde", default, deny_unknown_fields)]
pub struct Config {
    /// Text that replaces each match.
    pub mask: String,
    /// Only treat digit runs that pass the Luhn checksum as card numbers.
    pub luhn: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mask: "[redacted]".to_owned(),
            luhn: false,
        }
    }
}

/// The redaction plugin.
#[derive(Debug)]
pub struct Redact {
    config: Config,
}

impl Plugin for Redact {
    type Config = Config;

    fn init(config: Config) -> Result<Self, String> {
        Ok(Self { config })
    }

    fn on_publish(&mut self, _who: &Identity, channel: &str, data: &str) -> PublishDecision {
        if !may_contain_match(data) {
            return PublishDecision::Pass;
        }
        let mut value = match json::parse(data) {
            Ok(value) => value,
            Err(e) => return PublishDecision::reject(format!("cannot inspect message: {e}")),
        };
        if self.redact_value(&mut value) {
            PublishDecision::forward_one(Outgoing::json(channel, &value))
        } else {
            PublishDecision::Pass
        }
    }
}

impl Redact {
    /// Redact every string inside `value`; returns whether anything changed.
    fn redact_value(&self, value: &mut Value) -> bool {
        match value {
            Value::String(s) => match self.redact_str(s) {
                Some(redacted) => {
                    *s = redacted;
                    true
                }
                None => false,
            },
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, v| self.redact_value(v) | changed),
            Value::Object(map) => map
                .values_mut()
                .fold(false, |changed, v| self.redact_value(v) | changed),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }

    /// `text` with e-mail addresses and card numbers masked, or `None` if it has neither.
    pub fn redact_str(&self, text: &str) -> Option<String> {
        let emails = replace_spans(text, &email_spans(text), &self.config.mask);
        let current = emails.as_deref().unwrap_or(text);
        let cards = replace_spans(
            current,
            &card_spans(current, self.config.luhn),
            &self.config.mask,
        );
        cards.or(emails)
    }
}

/// Cheap test on the raw JSON text: can any string in it hold an e-mail or a card number?
fn may_contain_match(data: &str) -> bool {
    // `\u` escapes could spell `@` or digits, so they force a full scan.
    data.contains('@')
        || data.contains("\\u")
        || data.bytes().filter(u8::is_ascii_digit).count() >= 13
}

fn replace_spans(text: &str, spans: &[(usize, usize)], mask: &str) -> Option<String> {
    if spans.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for &(start, end) in spans {
        out.push_str(&text[last..start]);
        out.push_str(mask);
        last = end;
    }
    out.push_str(&text[last..]);
    Some(out)
}

fn is_local_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

fn valid_domain(domain: &[u8]) -> bool {
    let mut labels = 0;
    let mut last: &[u8] = &[];
    for label in domain.split(|&b| b == b'.') {
        if label.is_empty() || label[0] == b'-' || label[label.len() - 1] == b'-' {
            return false;
        }
        labels += 1;
        last = label;
    }
    labels >= 2 && last.len() >= 2 && last.iter().all(u8::is_ascii_alphabetic)
}

/// Byte ranges of the e-mail addresses in `text` (ASCII boundaries, in order, disjoint).
pub fn email_spans(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut floor = 0; // a local part may not reach back into the previous match
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'@' {
            i += 1;
            continue;
        }
        let mut start = i;
        while start > floor && is_local_byte(b[start - 1]) {
            start -= 1;
        }
        while start < i && b[start] == b'.' {
            start += 1;
        }
        let mut end = i + 1;
        while end < b.len() && is_domain_byte(b[end]) {
            end += 1;
        }
        while end > i + 1 && matches!(b[end - 1], b'.' | b'-') {
            end -= 1;
        }
        if start < i && valid_domain(&b[i + 1..end]) {
            spans.push((start, end));
            floor = end;
            i = end;
        } else {
            i += 1;
        }
    }
    spans
}

fn luhn_valid(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let sum: u32 = digits
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Byte ranges of the card-like numbers in `text` (ASCII boundaries, in order, disjoint).
pub fn card_spans(text: &str, luhn: bool) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || (i > 0 && b[i - 1].is_ascii_alphanumeric()) {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i;
        let mut digits = 0;
        let mut j = i;
        loop {
            if j < b.len() && b[j].is_ascii_digit() {
                digits += 1;
                j += 1;
                end = j;
            } else if j + 1 < b.len() && matches!(b[j], b' ' | b'-') && b[j + 1].is_ascii_digit() {
                j += 1;
            } else {
                break;
            }
        }
        let detached = end == b.len() || !b[end].is_ascii_alphanumeric();
        if detached
            && (13..=19).contains(&digits)
            && (!luhn
                || luhn_valid(
                    b[start..end]
                        .iter()
                        .filter(|c| c.is_ascii_digit())
                        .map(|c| c - b'0'),
                ))
        {
            spans.push((start, end));
        }
        i = end;
    }
    spans
}

export_plugin!(Redact);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::testing::{Instance, new_plugin};

    fn redact(text: &str) -> String {
        let r = new_plugin::<Redact>("{}").unwrap();
        r.redact_str(text).unwrap_or_else(|| text.to_owned())
    }

    #[test]
    fn emails() {
        assert_eq!(redact("mail bob@example.com."), "mail [redacted].");
        assert_eq!(
            redact("a.b+tag@mail.co.uk, x_y@sub-d.example.org!"),
            "[redacted], [redacted]!"
        );
        assert_eq!(redact("<j.doe@corp.io>"), "<[redacted]>");
        for keep in [
            "@bob",
            "bob@",
            "a@b",
            "a@b.c",
            "a@-b.com",
            "a@b..com",
            "x @ y.com",
        ] {
            assert_eq!(redact(keep), keep);
        }
    }

    #[test]
    fn cards() {
        assert_eq!(redact("card 4111111111111111 ok"), "card [redacted] ok");
        assert_eq!(redact("4111 1111 1111 1111"), "[redacted]");
        assert_eq!(redact("n=4111-1111-1111-1111;"), "n=[redacted];");
        assert_eq!(redact("1234567890123"), "[redacted]"); // 13 digits
        assert_eq!(redact("1234567890123456789"), "[redacted]"); // 19 digits
        for keep in [
            "123456789012",         // 12 digits
            "12345678901234567890", // 20 digits
            "id4111111111111111",   // glued to letters
            "4111111111111111x",
            "4111  1111 1111 1111", // double space splits the run
            "call 555-123-4567",
        ] {
            assert_eq!(redact(keep), keep);
        }
        assert_eq!(redact("é4111111111111111"), "é[redacted]");
    }

    #[test]
    fn luhn_option() {
        let r = new_plugin::<Redact>(r#"{"luhn": true, "mask": "***"}"#).unwrap();
        assert_eq!(r.redact_str("4111 1111 1111 1111").as_deref(), Some("***"));
        assert_eq!(r.redact_str("4111 1111 1111 1112"), None);
    }

    #[test]
    fn publish_redacts_nested_strings() {
        let p = Instance::<Redact>::init(r##"{"mask": "#"}"##).unwrap();
        let decision = p.publish(
            &Identity::anonymous(),
            "chat:x",
            r#"{"text":"to a@b.io","n":4111111111111111,"list":[{"c":"4111-1111-1111-1111"}],"bob@x.com":1}"#,
        );
        let PublishDecision::Forward(out) = decision else {
            panic!("expected forward, got {decision:?}");
        };
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].channel, "chat:x");
        let v = json::parse(&out[0].data).unwrap();
        assert_eq!(v["text"], "to #");
        assert_eq!(v["n"], 4111111111111111u64); // numbers are not strings
        assert_eq!(v["list"][0]["c"], "#");
        assert_eq!(v["bob@x.com"], 1); // keys are kept
    }

    #[test]
    fn publish_passes_clean_messages() {
        let mut p = new_plugin::<Redact>("").unwrap();
        let who = Identity::anonymous();
        assert_eq!(
            p.on_publish(&who, "c", r#"{"text":"hello"}"#),
            PublishDecision::Pass
        );
        assert_eq!(
            p.on_publish(&who, "c", r#"{"text":"@bob 12345678901234567890"}"#),
            PublishDecision::Pass
        );
        // An escaped `@` is still found.
        let d = p.on_publish(&who, "c", r#"["bob\u0040example.com"]"#);
        assert_eq!(
            d,
            PublishDecision::forward_one(Outgoing::new("c", r#"["[redacted]"]"#))
        );
    }

    #[test]
    fn too_deep_is_rejected() {
        let mut p = new_plugin::<Redact>("").unwrap();
        let data = format!("{}\"a@b.io\"{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(
            p.on_publish(&Identity::anonymous(), "c", &data),
            PublishDecision::Reject(_)
        ));
    }

    #[test]
    fn bad_config() {
        assert!(new_plugin::<Redact>(r#"{"mask": 1}"#).is_err());
        assert!(new_plugin::<Redact>(r#"{"masks": "x"}"#).is_err());
    }
}
