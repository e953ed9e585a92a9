//! Which keys a search matches: a substring or a glob (`*` any run of characters, `?` one),
//! either case-sensitive or not; and the folder a key falls in under a separator.

/// A search over keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMatch {
    kind: Kind,
    ignore_case: bool,
    /// The pattern as compared (lowercased when case is ignored), as characters.
    pattern: Vec<char>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Contains,
    Glob,
}

impl KeyMatch {
    /// Keys containing `text`.
    pub fn contains(text: &str, ignore_case: bool) -> Self {
        Self::new(Kind::Contains, text, ignore_case)
    }

    /// Keys the whole of which `pattern` matches: `*` is any run of characters (also
    /// none), `?` one character; every other character stands for itself.
    pub fn glob(pattern: &str, ignore_case: bool) -> Self {
        Self::new(Kind::Glob, pattern, ignore_case)
    }

    fn new(kind: Kind, text: &str, ignore_case: bool) -> Self {
        Self {
            kind,
            ignore_case,
            pattern: fold(text, ignore_case).chars().collect(),
        }
    }

    pub fn matches(&self, key: &str) -> bool {
        let key: Vec<char> = fold(key, self.ignore_case).chars().collect();
        match self.kind {
            Kind::Contains => {
                self.pattern.is_empty()
                    || key.windows(self.pattern.len()).any(|w| w == self.pattern)
            }
            Kind::Glob => glob_match(&self.pattern, &key),
        }
    }
}

fn fold(text: &str, ignore_case: bool) -> std::borrow::Cow<'_, str> {
    if ignore_case {
        text.to_lowercase().into()
    } else {
        text.into()
    }
}

/// Wildcard matching with backtracking to the last `*` only: linear in practice, at worst
/// pattern length times key length.
fn glob_match(p: &[char], s: &[char]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == s[si])) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The folder `key` falls in below `prefix` when keys are split at `separator`: the prefix,
/// the key's next part and the separator (e.g. `a/b/` for `a/b/c` below `a/`). `None` when
/// the key has no separator after the prefix (it is directly in the prefix's folder).
pub fn folder_of<'k>(key: &'k str, prefix: &str, separator: &str) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix)?;
    if separator.is_empty() {
        return None;
    }
    let at = rest.find(separator)?;
    Some(&key[..prefix.len() + at + separator.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substring_with_and_without_case() {
        let m = KeyMatch::contains("User", false);
        assert!(m.matches("app:User:1"));
        assert!(!m.matches("app:user:1"));
        let m = KeyMatch::contains("User", true);
        assert!(m.matches("app:user:1") && m.matches("USER") && !m.matches("use"));
        assert!(KeyMatch::contains("ключ", true).matches("КЛЮЧ/1"));
    }

    #[test]
    fn glob_stars_and_question_marks() {
        let g = |p: &str, k: &str| KeyMatch::glob(p, false).matches(k);
        assert!(g("user:*:name", "user:42:name"));
        assert!(g("user:*:name", "user::name"));
        assert!(!g("user:*:name", "user:42:names"));
        assert!(g("*", "") && g("*", "anything"));
        assert!(g("a?c", "abc") && !g("a?c", "ac") && !g("a?c", "abbc"));
        assert!(g("*a*b*", "xxaxxbxx") && !g("*a*b*", "xxbxxaxx"));
        assert!(g("é?", "éü"), "characters, not bytes");
        assert!(!g("abc", "abcd") && g("abc", "abc"));
        assert!(KeyMatch::glob("USER:*", true).matches("user:1"));
    }

    #[test]
    fn folders_below_a_prefix() {
        assert_eq!(folder_of("a/b/c", "a/", "/"), Some("a/b/"));
        assert_eq!(folder_of("a/b", "a/", "/"), None);
        assert_eq!(folder_of("a/b/", "a/", "/"), Some("a/b/"));
        assert_eq!(folder_of("x:1:2", "", ":"), Some("x:"));
        assert_eq!(folder_of("other", "a/", "/"), None);
        assert_eq!(folder_of("a::b", "a", "::"), Some("a::"));
        assert_eq!(folder_of("a", "a", "/"), None);
        assert_eq!(folder_of("a::b::c", "a::", "::"), Some("a::b::"));
    }
}
