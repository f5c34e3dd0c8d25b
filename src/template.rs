//! Chat templates: HF Jinja templates rendered with minijinja the way
//! transformers' `apply_chat_template` renders them.
//!
//! transformers renders with Jinja2 (`trim_blocks`, `lstrip_blocks`, no
//! autoescape), its own `tojson` filter and the globals `raise_exception` and
//! `strftime_now`. The environment built here mirrors that, plus minijinja's
//! Python-compatibility methods (`.strip()`, `.startswith()`, `.items()`…)
//! that real templates call.

use std::path::Path;
use std::sync::{Arc, Mutex};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, Value};

use crate::{Error, Result};

/// One chat message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat template and where it came from.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    /// `gguf:tokenizer.chat_template`, `tokenizer_config.json`, `builtin:NAME`, `file:PATH`.
    pub source: String,
    pub text: String,
}

/// Built-in templates: (name, aliases, text). Which family uses which is in
/// the family registry (`model::arch::FAMILIES`); the aliases here are other
/// spellings of the template's name.
const BUILTINS: &[(&str, &[&str], &str)] = &[
    (
        "gemma3",
        &["gemma-3"],
        include_str!("templates/gemma3.jinja"),
    ),
    (
        "chatml",
        &["chatml"],
        include_str!("templates/chatml.jinja"),
    ),
    (
        "llama3",
        &["llama3", "llama-3", "llama-bpe"],
        include_str!("templates/llama3.jinja"),
    ),
];

impl ChatTemplate {
    /// A template from its text and source label.
    pub fn new(text: impl Into<String>, source: impl Into<String>) -> Self {
        ChatTemplate {
            source: source.into(),
            text: text.into(),
        }
    }

    /// Read a template file (`--chat-template FILE`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Ok(ChatTemplate::new(text, format!("file:{}", path.display())))
    }

    /// A built-in template by name, or the one for an architecture whose
    /// files carry none.
    ///
    /// Accepts a template name (`gemma3`, `chatml`, `llama3`) or an
    /// architecture as GGUF or HF name it (`gemma3_text`), whose template
    /// the family registry gives; the source is `builtin:NAME`.
    pub fn builtin(arch: &str) -> Option<Self> {
        let key = arch.to_ascii_lowercase();
        let by_name = |key: &str| {
            BUILTINS
                .iter()
                .find(|(name, aliases, _)| *name == key || aliases.contains(&key))
                .map(|(name, _, text)| ChatTemplate::new(*text, format!("builtin:{name}")))
        };
        by_name(&key).or_else(|| {
            crate::model::arch::FAMILIES
                .iter()
                .find(|s| s.name == key || s.hf_model_types.contains(&key.as_str()))
                .and_then(|s| by_name(s.template?))
        })
    }

    /// Render like HF `apply_chat_template(messages, add_generation_prompt=...)`.
    pub fn render(
        &self,
        messages: &[Message],
        bos_token: &str,
        eos_token: &str,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let messages: Value = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        // transformers passes `tools` and `documents` as None when not given,
        // so `tools is defined` is true and `tools is none` too.
        let ctx = Value::from_pairs([
            ("messages", messages),
            ("bos_token", Value::from(bos_token)),
            ("eos_token", Value::from(eos_token)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ]);
        self.render_value(ctx)
    }

    /// Render with an arbitrary context (a minijinja map), for callers that
    /// need extra variables such as `enable_thinking`.
    fn render_value(&self, ctx: Value) -> Result<String> {
        // `raise_exception` stores its message here so the error carries the
        // template's own words rather than minijinja's wrapping.
        let raised: Arc<Mutex<Option<String>>> = Arc::default();
        let env = environment(raised.clone());
        let source = neutralise_generation_tags(&self.text);
        let mut out = CappedOutput::default();
        // A panic inside minijinja on a hostile template is one more error.
        let wrap = |m: String| Error::Template(format!("template `{}`: {m}", self.source));
        let render = || {
            Ok(env
                .template_from_named_str("chat_template", &source)
                .and_then(|t| t.render_captured_to(ctx, &mut out).map(drop)))
        };
        let result = crate::model::bounds::guard(wrap, render)?;
        let parse_or_render = |e: minijinja::Error| {
            if e.kind() == ErrorKind::OutOfFuel {
                return Error::Template(format!(
                    "template `{}` ran out of fuel after {TEMPLATE_FUEL} steps: it loops without bound",
                    self.source
                ));
            }
            if out.overflowed {
                return Error::Template(format!(
                    "template `{}` wrote more than {TEMPLATE_MAX_OUTPUT} bytes",
                    self.source
                ));
            }
            let raised = raised.lock().ok().and_then(|mut r| r.take());
            Error::Template(raised.unwrap_or_else(|| one_line(&crate::error::chain(&e))))
        };
        result.map_err(parse_or_render)?;
        String::from_utf8(out.bytes)
            .map_err(|_| Error::Template(format!("template `{}` wrote invalid UTF-8", self.source)))
    }
}

/// Instructions one render may run. A real chat template over a long
/// conversation uses well under 1M; a template looping over `range(100000)`
/// twice nested would run for minutes (issue #13 item 2).
const TEMPLATE_FUEL: u64 = 50_000_000;
/// Bytes one render may write: 64 MiB, far beyond any model's context.
const TEMPLATE_MAX_OUTPUT: usize = 64 << 20;

/// Render output that refuses to grow past [`TEMPLATE_MAX_OUTPUT`].
#[derive(Default)]
struct CappedOutput {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > TEMPLATE_MAX_OUTPUT {
            self.overflowed = true;
            return Err(std::io::Error::other("template output too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The Jinja environment transformers uses, rebuilt on minijinja.
fn environment(raised: Arc<Mutex<Option<String>>>) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("default delimiters are valid"),
    );
    // Jinja2 in transformers never autoescapes.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", tojson);
    env.add_filter("trim", trim);
    env.add_function(
        "raise_exception",
        move |msg: String| -> std::result::Result<Value, minijinja::Error> {
            if let Ok(mut r) = raised.lock() {
                *r = Some(msg.clone());
            }
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
    env
}

/// transformers' `AssistantTracker` extension adds `{% generation %}` …
/// `{% endgeneration %}` around assistant text (for assistant-token masks); it
/// renders its body unchanged. minijinja has no such tag, so turn the pair into
/// `{% if true %}` … `{% endif %}`, keeping any `-`/`+` whitespace control.
fn neutralise_generation_tags(src: &str) -> std::borrow::Cow<'_, str> {
    if !src.contains("generation") {
        return src.into();
    }
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        // The closing `%}` comes after the opening `{%`: in `{%}` they overlap.
        let Some(end) = tag[2..].find("%}").map(|e| e + 2) else {
            break;
        };
        let inner = &tag[2..end];
        let (lead, body) = match inner.chars().next() {
            Some(c @ ('-' | '+')) => (c.to_string(), &inner[1..]),
            _ => (String::new(), inner),
        };
        let (body, trail) = match body.chars().last() {
            Some(c @ ('-' | '+')) => (&body[..body.len() - 1], c.to_string()),
            _ => (body, String::new()),
        };
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out.into()
}

/// Error messages are one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// --- filters ---------------------------------------------------------------

/// Python's `str.isspace()`: Rust's whitespace plus the four separators
/// U+001C..U+001F, which Python counts and Unicode does not.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Jinja2 `trim(value, chars=None)`: Python `str.strip(chars)`.
fn trim(value: Value, chars: Option<String>) -> Value {
    let s = value.to_string();
    let out = match chars {
        Some(chars) => s.trim_matches(|c| chars.contains(c)).to_string(),
        None => s.trim_matches(is_py_space).to_string(),
    };
    if value.is_safe() {
        Value::from_safe_string(out)
    } else {
        Value::from(out)
    }
}

/// HF's `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`. Unlike Jinja's own filter it
/// does not HTML-escape, and it uses Python's spacing (`{"a": 1, "b": 2}`).
fn tojson(
    value: Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent: Option<String> = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.kind() {
            ValueKind::Number => Some(" ".repeat(v.as_usize().unwrap_or(0))),
            ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ))
            }
        },
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let separators = kwargs.get::<Option<Value>>("separators")?;
    kwargs.assert_all_used()?;
    // Python's defaults: (', ', ': ') without indent, (',', ': ') with it.
    let (item_sep, key_sep) = match separators.filter(|v| !v.is_none()) {
        Some(v) => {
            let parts: Vec<String> = v
                .try_iter()?
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .filter(|p: &Vec<String>| p.len() == 2)
                .ok_or_else(|| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    )
                })?;
            (parts[0].clone(), parts[1].clone())
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        ensure_ascii,
        sort_keys,
    };
    let mut out = String::new();
    write_json(&mut out, &value, &opts, 0)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

/// Serialise like Python's `json.dumps` (its `_iterencode`), preserving map order.
fn write_json(
    out: &mut String,
    v: &Value,
    o: &JsonOpts,
    level: usize,
) -> std::result::Result<(), minijinja::Error> {
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                out.push_str(&py_float(f64::try_from(v.clone())?));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, '[', ']', &items, o, level, |out, item, level| {
                write_json(out, item, o, level)
            })?;
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in v.try_iter()? {
                let val = v.get_item(&key)?;
                entries.push((json_key(&key)?, val));
            }
            if o.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, '{', '}', &entries, o, level, |out, (k, val), level| {
                write_json_str(out, k, o.ensure_ascii);
                out.push_str(&o.key_sep);
                write_json(out, val, o, level)
            })?;
        }
        ValueKind::Undefined => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "Object of type Undefined is not JSON serializable",
            ))
        }
        other => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {other} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// `[...]` / `{...}` with Python's item separator and optional indentation.
fn write_container<T>(
    out: &mut String,
    open: char,
    close: char,
    items: &[T],
    o: &JsonOpts,
    level: usize,
    mut write_item: impl FnMut(&mut String, &T, usize) -> std::result::Result<(), minijinja::Error>,
) -> std::result::Result<(), minijinja::Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    newline(out, level + 1);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&o.item_sep);
            newline(out, level + 1);
        }
        write_item(out, item, level + 1)?;
    }
    newline(out, level);
    out.push(close);
    Ok(())
}

/// Python converts str, int, float, bool and None keys to strings.
fn json_key(key: &Value) -> std::result::Result<String, minijinja::Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
        ValueKind::None => "null".to_string(),
        ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_string(),
        ValueKind::Number if key.is_integer() => key.to_string(),
        ValueKind::Number => py_float(f64::try_from(key.clone())?),
        other => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("keys must be str, int, float, bool or None, not {other}"),
            ))
        }
    })
}

/// Python's JSON string escaping (`ensure_ascii` escapes everything outside
/// printable ASCII as `\uXXXX`, with surrogate pairs).
fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` as `json.dumps` writes it: `1.0`, `1e-05`, `1.5e+20`,
/// `NaN`, `Infinity`.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` is the shortest round-trip digits, like Python's repr.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

// --- strftime_now ----------------------------------------------------------

/// `strftime_now(fmt)`: the local time formatted with Python's `strftime`
/// directives (the common ones; unknown directives are kept verbatim, as glibc does).
fn strftime_now(fmt: &str) -> std::result::Result<Value, minijinja::Error> {
    let now = time::OffsetDateTime::now_local().unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    Ok(Value::from(strftime(&now, fmt)))
}

fn strftime(t: &time::OffsetDateTime, fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let month = MONTHS[usize::from(u8::from(t.month())) - 1];
    let day = DAYS[usize::from(t.weekday().number_days_from_monday())];
    let hour12 = match t.hour() % 12 {
        0 => 12,
        h => h,
    };
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{:02}", t.day())),
            Some('e') => out.push_str(&format!("{:2}", t.day())),
            Some('m') => out.push_str(&format!("{:02}", u8::from(t.month()))),
            Some('Y') => out.push_str(&t.year().to_string()),
            Some('y') => out.push_str(&format!("{:02}", t.year().rem_euclid(100))),
            Some('B') => out.push_str(month),
            Some('b') | Some('h') => out.push_str(&month[..3]),
            Some('A') => out.push_str(day),
            Some('a') => out.push_str(&day[..3]),
            Some('H') => out.push_str(&format!("{:02}", t.hour())),
            Some('I') => out.push_str(&format!("{hour12:02}")),
            Some('M') => out.push_str(&format!("{:02}", t.minute())),
            Some('S') => out.push_str(&format!("{:02}", t.second())),
            Some('p') => out.push_str(if t.hour() < 12 { "AM" } else { "PM" }),
            Some('j') => out.push_str(&format!("{:03}", t.ordinal())),
            Some('F') => out.push_str(&format!(
                "{}-{:02}-{:02}",
                t.year(),
                u8::from(t.month()),
                t.day()
            )),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags() {
        let src = "a{% generation %}b{%- endgeneration -%} c{% if x %}{% endif %}";
        assert_eq!(
            neutralise_generation_tags(src),
            "a{% if true %}b{%- endif -%} c{% if x %}{% endif %}"
        );
        let t = ChatTemplate::new(
            "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}",
            "test",
        );
        assert_eq!(
            t.render(&[Message::new("assistant", "hi")], "", "", false)
                .unwrap(),
            "hi"
        );
    }

    /// Found by the `chat_template` fuzz target: in `{%}` the opening `{%`
    /// and a closing `%}` overlap, which sliced the tag backwards and panicked.
    #[test]
    fn overlapping_tag_delimiters_are_a_template_error_not_a_panic() {
        let src = "{%}{% generation %}x{% endgeneration %}";
        assert_eq!(
            neutralise_generation_tags(src),
            "{%}{% generation %}x{% endif %}"
        );
        let t = ChatTemplate::new(src, "test");
        assert!(t
            .render(&[Message::new("user", "hi")], "", "", false)
            .is_err());
    }

    #[test]
    fn python_floats() {
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(0.5), "0.5");
        assert_eq!(py_float(1e-5), "1e-05");
        assert_eq!(py_float(1.5e20), "1.5e+20");
        assert_eq!(py_float(123456.0), "123456.0");
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(0.0001), "0.0001");
    }

    #[test]
    fn strftime_directives() {
        let date = time::Date::from_calendar_date(2024, time::Month::July, 5).unwrap();
        let t = date.with_hms(14, 3, 9).unwrap().assume_utc();
        assert_eq!(strftime(&t, "%d %b %Y"), "05 Jul 2024");
        assert_eq!(
            strftime(&t, "%A %B %e, %I:%M:%S %p %%"),
            "Friday July  5, 02:03:09 PM %"
        );
    }
}
