#![allow(dead_code)]
//! A small strict XML reader for the SVG files srcache writes (also included by the CLI tests with
//! `#[path]`): checks well-formedness (one root, tags nest and close, attributes quoted, entities known) and
//! returns the elements with their attributes, so a test can find the drawn series and tiles.

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Element {
    pub name: String,
    pub attrs: BTreeMap<String, String>,
    /// Names of the enclosing elements, outermost first.
    pub parents: Vec<String>,
    /// Text directly inside the element (entities decoded).
    pub text: String,
}

impl Element {
    pub fn attr(&self, k: &str) -> &str {
        self.attrs.get(k).map(String::as_str).unwrap_or("")
    }
    pub fn num(&self, k: &str) -> f64 {
        self.attr(k).parse().unwrap_or(f64::NAN)
    }
    /// The `points` attribute of a polyline: "x,y x,y ...".
    pub fn points(&self) -> Vec<(f64, f64)> {
        self.attr("points")
            .split_whitespace()
            .filter_map(|p| {
                let (x, y) = p.split_once(',')?;
                Some((x.parse().ok()?, y.parse().ok()?))
            })
            .collect()
    }
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let end = rest[i..].find(';').ok_or_else(|| format!("unterminated entity in {s:?}"))? + i;
        out.push_str(match &rest[i + 1..end] {
            "lt" => "<",
            "gt" => ">",
            "amp" => "&",
            "quot" => "\"",
            "apos" => "'",
            e => return Err(format!("unknown entity &{e};")),
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses `doc`; Err says what is malformed.
pub fn parse(doc: &str) -> Result<Vec<Element>, String> {
    let mut out: Vec<Element> = Vec::new();
    let mut stack: Vec<(String, usize)> = Vec::new();
    let mut roots = 0;
    let mut i = 0;
    let b = doc.as_bytes();
    while i < b.len() {
        if b[i] != b'<' {
            let j = doc[i..].find('<').map(|j| i + j).unwrap_or(b.len());
            let text = unescape(&doc[i..j])?;
            match stack.last() {
                Some((_, idx)) => out[*idx].text.push_str(&text),
                None if text.trim().is_empty() => {}
                None => return Err(format!("text outside the root element: {:?}", text.trim())),
            }
            i = j;
            continue;
        }
        if doc[i..].starts_with("<?") {
            i += doc[i..].find("?>").ok_or("unterminated <?")? + 2;
            continue;
        }
        if doc[i..].starts_with("<!--") {
            i += doc[i..].find("-->").ok_or("unterminated comment")? + 3;
            continue;
        }
        let end = doc[i..].find('>').ok_or("unterminated tag")? + i;
        let tag = &doc[i + 1..end];
        i = end + 1;
        if let Some(name) = tag.strip_prefix('/') {
            let (open, _) = stack.pop().ok_or_else(|| format!("</{name}> closes nothing"))?;
            if open != name.trim() {
                return Err(format!("</{}> closes <{open}>", name.trim()));
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
        let name = tag[..name_end].to_string();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == ':' || c == '-' || c == '_') {
            return Err(format!("bad element name {name:?}"));
        }
        let mut attrs = BTreeMap::new();
        let mut rest = tag[name_end..].trim_start();
        while !rest.is_empty() {
            let eq = rest.find('=').ok_or_else(|| format!("attribute without value in <{name}>: {rest:?}"))?;
            let key = rest[..eq].trim().to_string();
            let after = rest[eq + 1..].trim_start();
            let q = after.chars().next().ok_or("attribute value missing")?;
            if q != '"' && q != '\'' {
                return Err(format!("unquoted attribute {key} in <{name}>"));
            }
            let close = after[1..].find(q).ok_or_else(|| format!("unterminated attribute {key}"))? + 1;
            if attrs.insert(key.clone(), unescape(&after[1..close])?).is_some() {
                return Err(format!("duplicate attribute {key} in <{name}>"));
            }
            rest = after[close + 1..].trim_start();
        }
        if stack.is_empty() {
            roots += 1;
        }
        out.push(Element { name: name.clone(), attrs, parents: stack.iter().map(|s| s.0.clone()).collect(), text: String::new() });
        if !self_closing {
            stack.push((name, out.len() - 1));
        }
    }
    if let Some((open, _)) = stack.last() {
        return Err(format!("<{open}> is never closed"));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    Ok(out)
}

/// Least-squares fit `px = a + b·v` over pairs; returns (b, the largest residual in pixels).
pub fn affine_fit(pairs: &[(f64, f64)]) -> (f64, f64) {
    let n = pairs.len() as f64;
    let (mv, mp) = pairs.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0 / n, a.1 + p.1 / n));
    let cov: f64 = pairs.iter().map(|p| (p.0 - mv) * (p.1 - mp)).sum();
    let var: f64 = pairs.iter().map(|p| (p.0 - mv) * (p.0 - mv)).sum();
    let b = cov / var;
    let a = mp - b * mv;
    let worst = pairs.iter().map(|p| (a + b * p.0 - p.1).abs()).fold(0.0, f64::max);
    (b, worst)
}

/// Standard base64 (the `data:image/png;base64,` payload of an embedded `<image>`), padding ignored.
pub fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let b: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for ch in b.chunks(4) {
        let n = ch.iter().enumerate().fold(0u32, |a, (i, &c)| a | (val(c) as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..ch.len()]);
    }
    out
}
