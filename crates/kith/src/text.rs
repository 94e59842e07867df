//! Text from other people, made safe for a terminal.
//!
//! A message, a display name or a call's party comes from a peer. Printed raw, its control characters
//! reach the terminal: ESC starts escape sequences that move the cursor, rewrite earlier lines, change the
//! window title or (in some terminals) answer back into the input; BEL rings; a carriage return overwrites
//! the line; bidirectional overrides reorder what is shown. In text output they are shown instead, in the
//! notation `cat -v` made familiar (`^[` for ESC, `^G` for BEL, `^?` for DEL) and as `<U+XXXX>` for the
//! rest. JSON output keeps the exact text.

use std::borrow::Cow;

/// `s` with every control character (and every character that reorders or hides text) shown visibly.
/// Tabs and line breaks are control characters here too: callers that print several lines split first
/// (see [`visible_lines`]).
pub fn visible(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !needs_escape(c) {
            out.push(c);
            continue;
        }
        match c as u32 {
            // C0: caret notation (^@ .. ^_), DEL as ^?.
            n @ 0..=0x1f => {
                out.push('^');
                out.push(char::from(b'@' + n as u8));
            }
            0x7f => out.push_str("^?"),
            n => out.push_str(&format!("<U+{n:04X}>")),
        }
    }
    Cow::Owned(out)
}

/// The lines of `s`, each made [`visible`]: a multi-line message prints as several lines, none of which
/// can hold a control character.
pub fn visible_lines(s: &str) -> Vec<Cow<'_, str>> {
    s.split('\n')
        .map(|l| visible(l.strip_suffix('\r').unwrap_or(l)))
        .collect()
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            // Bidirectional embeddings, overrides and isolates ("Trojan Source").
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            // Line and paragraph separators, which some terminals break lines on.
            | '\u{2028}' | '\u{2029}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(visible("plain text, ünïcode ✓"), "plain text, ünïcode ✓");
        assert!(matches!(visible("plain"), Cow::Borrowed(_)));
        assert_eq!(visible("\x1b[2J\x07"), "^[[2J^G");
        assert_eq!(visible("a\rb\tc\0d\x7f"), "a^Mb^Ic^@d^?");
        assert_eq!(visible("\u{9b}31m"), "<U+009B>31m");
        assert_eq!(visible("abc\u{202e}fed"), "abc<U+202E>fed");
        assert_eq!(visible("title\x1b]0;pwned\x07"), "title^[]0;pwned^G");
        // Nothing that a terminal acts on survives.
        for c in (0u32..0x110000).filter_map(char::from_u32) {
            let v = visible(&c.to_string()).into_owned();
            assert!(!v.chars().any(needs_escape), "{c:?} -> {v:?}");
        }
    }

    #[test]
    fn lines_split_and_each_is_visible() {
        assert_eq!(
            visible_lines("one\r\ntwo\x1b\nthree"),
            vec!["one", "two^[", "three"]
        );
        assert_eq!(visible_lines("single"), vec!["single"]);
    }
}
