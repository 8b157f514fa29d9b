//! Where a key sits in the config file, so every error names its line (R-OP-1). The
//! file is parsed a second time into toml's spanned document tree; this is the only
//! place that knows about spans.

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::validate::{Key, Seg};

/// The 1-based line of byte `offset`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|s| s.bytes().filter(|&b| b == b'\n').count() + 1)
        .unwrap_or(1)
}

pub struct Lines<'a> {
    text: &'a str,
    root: Option<Spanned<DeTable<'a>>>,
}

impl<'a> Lines<'a> {
    pub fn parse(text: &'a str) -> Lines<'a> {
        // It parsed once already (into the model), so this cannot fail in practice;
        // without the tree, errors just lose their line.
        Lines {
            text,
            root: DeTable::parse(text).ok(),
        }
    }

    /// The line of `key`, or None when the file does not set it (a default, or an
    /// item made over the API).
    pub fn line(&self, key: &Key) -> Option<usize> {
        let root = self.root.as_ref()?;
        let mut segs = key.0.iter();
        let first = match segs.next()? {
            Seg::Name(n) => root.get_ref().get(*n)?,
            Seg::Index(_) => return None,
        };
        let mut at: &Spanned<DeValue<'a>> = first;
        for seg in segs {
            at = match seg {
                Seg::Name(n) => at.get_ref().get(*n)?,
                Seg::Index(i) => at.get_ref().get(*i)?,
            };
        }
        Some(line_of(self.text, at.span().start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_resolve_to_their_lines() {
        let text = "[rtmp]\nlisten = \"x\"\n\n[[template]]\nid = 1\n\n[[template]]\nid = 2\nhls = { enable = true }\n[[rule]]\ndomain = \"d\"\n";
        let lines = Lines::parse(text);
        let key = |v: Vec<Seg>| lines.line(&Key(v));
        use Seg::*;
        assert_eq!(key(vec![Name("rtmp"), Name("listen")]), Some(2));
        assert_eq!(key(vec![Name("template"), Index(1), Name("hls")]), Some(9));
        assert_eq!(key(vec![Name("template"), Index(0), Name("id")]), Some(5));
        assert_eq!(key(vec![Name("rule"), Index(0)]), Some(10));
        // Not in the file: defaults and API items have no line.
        assert_eq!(key(vec![Name("api"), Name("listen")]), None);
        assert_eq!(key(vec![Name("template"), Index(2)]), None);
    }
}
