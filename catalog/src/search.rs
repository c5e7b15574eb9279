//! Full-text search that works for Chinese.
//!
//! Chinese has no spaces between words, and SQLite's FTS5 tokenizers either
//! keep a whole run of Han characters as one token (`unicode61`) or need three
//! characters (`trigram`), so a two-character word such as `人口` inside
//! `户籍人口基础信息` is not found by either. We index overlapping character
//! bigrams of every CJK run (the approach of Lucene's CJK analyzer) plus the
//! single characters, and turn a query into phrases of the same bigrams: a
//! query word of n ≥ 2 characters matches exactly where its n-1 bigrams occur
//! in sequence. Other scripts are indexed as lowercase words and matched by prefix.

/// Whether `c` belongs to a script written without spaces (Han, kana, Hangul).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0x20000..=0x2FA1F) // Extensions B and later
}

/// One run of text: CJK characters or a word of another script.
enum Run {
    Cjk(Vec<char>),
    Word(String),
}

fn runs(text: &str) -> Vec<Run> {
    let mut out = Vec::new();
    let mut cjk = Vec::new();
    let mut word = String::new();
    let flush = |cjk: &mut Vec<char>, word: &mut String, out: &mut Vec<Run>| {
        if !cjk.is_empty() {
            out.push(Run::Cjk(std::mem::take(cjk)));
        }
        if !word.is_empty() {
            out.push(Run::Word(std::mem::take(word)));
        }
    };
    for c in text.chars() {
        if is_cjk(c) {
            if !word.is_empty() {
                flush(&mut Vec::new(), &mut word, &mut out);
            }
            cjk.push(c);
        } else if c.is_alphanumeric() {
            if !cjk.is_empty() {
                flush(&mut cjk, &mut String::new(), &mut out);
            }
            word.extend(c.to_lowercase());
        } else {
            flush(&mut cjk, &mut word, &mut out);
        }
    }
    flush(&mut cjk, &mut word, &mut out);
    out
}

/// The indexed forms of `text`: `(grams, chars)`, space-separated tokens for the FTS5 columns.
///
/// `grams` holds the bigrams of CJK runs (a lone character stands for itself)
/// and the words of other scripts, in text order; `chars` holds single CJK
/// characters, for one-character queries.
pub fn index_terms(text: &str) -> (String, String) {
    let mut grams = Vec::new();
    let mut chars = Vec::new();
    for run in runs(text) {
        match run {
            Run::Cjk(cs) => {
                if cs.len() == 1 {
                    grams.push(cs[0].to_string());
                }
                for w in cs.windows(2) {
                    grams.push(w.iter().collect::<String>());
                }
                chars.extend(cs.iter().map(|c| c.to_string()));
            }
            Run::Word(w) => grams.push(w),
        }
    }
    (grams.join(" "), chars.join(" "))
}

/// An FTS5 query for the user's text, or `None` when it holds nothing searchable.
///
/// Every term must match (AND). Tokens are produced by [`runs`] and so hold
/// only letters and digits; they are still quoted, so no input can change the
/// query's syntax.
pub fn fts_query(text: &str) -> Option<String> {
    let quote = |t: &str| format!("\"{}\"", t.replace('"', "\"\""));
    let mut terms = Vec::new();
    for run in runs(text) {
        match run {
            Run::Cjk(cs) if cs.len() == 1 => terms.push(format!("chars : {}", quote(&cs[0].to_string()))),
            Run::Cjk(cs) => {
                let grams: Vec<String> = cs.windows(2).map(|w| w.iter().collect()).collect();
                terms.push(format!("{{title body}} : {}", quote(&grams.join(" "))));
            }
            Run::Word(w) => terms.push(format!("{{title body}} : {}*", quote(&w))),
        }
    }
    if terms.is_empty() { None } else { Some(terms.join(" AND ")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bigrams_of_chinese() {
        let (grams, chars) = index_terms("户籍人口基础信息");
        assert_eq!(grams, "户籍 籍人 人口 口基 基础 础信 信息");
        assert_eq!(chars, "户 籍 人 口 基 础 信 息");
        let (grams, _) = index_terms("ID 号码 (GB11643)");
        assert_eq!(grams, "id 号码 gb11643");
    }

    #[test]
    fn queries() {
        assert_eq!(fts_query("人口").as_deref(), Some("{title body} : \"人口\""));
        assert_eq!(fts_query("户籍人口").as_deref(), Some("{title body} : \"户籍 籍人 人口\""));
        assert_eq!(fts_query("税").as_deref(), Some("chars : \"税\""));
        assert_eq!(fts_query("Pop 人口").as_deref(), Some("{title body} : \"pop\"* AND {title body} : \"人口\""));
        assert_eq!(fts_query("\" * - ()"), None);
        // Operators of the FTS5 syntax are plain words once quoted.
        assert_eq!(
            fts_query("a OR b").as_deref(),
            Some("{title body} : \"a\"* AND {title body} : \"or\"* AND {title body} : \"b\"*")
        );
    }
}
