//! Writes `schema.tsv`, the table [`super::schema`] embeds, and checks that it is current.
//!
//! Field numbers, wire types and message types come from the prost code of the `k8s-pb`
//! crate (generated from the upstream `generated.proto` files); what protobuf cannot say —
//! each field's JSON name and how Go writes its zero value — comes from the Go struct tags
//! (read from kubectl's binary by [`go_types`], or transcribed in [`apiextensions`]).
//! Fields neither knows (newer than kubectl 1.33) get the name their doc comment starts
//! with, else a camelCase one, and are written whenever present.
//!
//! `cargo test -p corten-control-plane --lib protobuf::generator -- --ignored` rewrites the
//! table; the tests here (not ignored) fail when it no longer matches `k8s-pb`. Test-only:
//! nothing here is linked into the server.
mod apiextensions;
mod go_types;

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context};

use go_types::{GoField, GoTypes};

/// The `k8s-pb` release the table is generated from (the dev-dependency, pinned).
const K8S_PB_VERSION: &str = "0.9.0";

/// The kubectl whose Go types give JSON names and zero-value rules.
const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";

/// Where the table lives.
fn table_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/apiserver/protobuf/schema.tsv")
}

/// The `k8s-pb` source directories whose messages the table holds: every `k8s.io/api`
/// group, meta/v1 and the apimachinery types it uses, and apiextensions/v1 (CRDs).
fn included(dir: &str) -> bool {
    dir.starts_with("api/")
        || matches!(
            dir,
            "apimachinery/pkg/apis/meta/v1"
                | "apimachinery/pkg/runtime"
                | "apimachinery/pkg/util/intstr"
                | "apimachinery/pkg/api/resource"
                | "apiextensions_apiserver/pkg/apis/apiextensions/v1"
        )
}

/// The Go package a `k8s-pb` source directory was generated from.
fn go_package(dir: &str) -> String {
    match dir.strip_prefix("apiextensions_apiserver/") {
        Some(rest) => format!("k8s.io/apiextensions-apiserver/{rest}"),
        None => format!("k8s.io/{dir}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    One,
    List,
    Map,
}

impl Shape {
    fn as_str(&self) -> &'static str {
        match self {
            Shape::One => "one",
            Shape::List => "list",
            Shape::Map => "map",
        }
    }
}

/// A Go field name as its JSON name would most likely be (`AllocatedResources` →
/// `allocatedResources`, `URLPath` → `urlPath`).
fn json_case(word: &str) -> String {
    let chars: Vec<char> = word.chars().collect();
    let upper = chars.iter().take_while(|c| c.is_uppercase()).count();
    let lowered = match upper {
        0 => 0,
        n if n == chars.len() => n,
        1 => 1,
        n => n - 1,
    };
    chars
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            if i < lowered {
                c.to_lowercase().collect::<Vec<_>>()
            } else {
                vec![*c]
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
struct PbField {
    number: u32,
    rust_name: String,
    /// The first word of the field's doc comment (Kubernetes docs usually start with the
    /// JSON name).
    doc_word: Option<String>,
    shape: Shape,
    /// A scalar (`string`, `int32`, ...) or a message's full name.
    ty: String,
}

#[derive(Debug, Clone)]
struct PbMessage {
    /// Source directory under `k8s-pb/src` (`api/core/v1`).
    dir: String,
    name: String,
    /// A Go slice type wrapped in a message (`+protobuf.nullable=true`, one repeated field):
    /// its JSON form is the bare list.
    list_wrapper: bool,
    fields: Vec<PbField>,
}

fn package_of(dir: &str) -> String {
    format!("k8s.io.{}", dir.replace('/', "."))
}

impl PbMessage {
    fn full_name(&self) -> String {
        format!("{}.{}", package_of(&self.dir), self.name)
    }
}

/// Finds the `k8s-pb` sources in cargo's registry.
fn k8s_pb_source() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let registry = home.join("registry/src");
    for entry in
        std::fs::read_dir(&registry).with_context(|| format!("reading {}", registry.display()))?
    {
        let candidate = entry?.path().join(format!("k8s-pb-{K8S_PB_VERSION}/src"));
        if candidate.is_dir() {
            return Ok(candidate);
        }
    }
    bail!(
        "k8s-pb {K8S_PB_VERSION} is not in {} (it is a dev-dependency: `cargo fetch` brings it)",
        registry.display()
    )
}

/// Every `mod.rs` under `root` that holds messages, as (directory relative to root, text).
fn sources(root: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "mod.rs") {
                let relative = dir.strip_prefix(root)?.to_string_lossy().replace('\\', "/");
                let text = std::fs::read_to_string(&path)?;
                if text.contains("::prost::Message") {
                    out.push((relative, text));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The text between the first `<` and its matching `>` of a Rust type.
fn generic_argument(text: &str) -> Option<&str> {
    let start = text.find('<')? + 1;
    let end = text.rfind('>')?;
    text.get(start..end)
}

/// Resolves a Rust path (`super::super::apimachinery::pkg::apis::meta::v1::ObjectMeta`)
/// used in `dir` to a message's full name.
fn resolve(dir: &str, path: &str) -> anyhow::Result<String> {
    // rustfmt leaves a trailing comma after a generic argument it breaks onto its own line.
    let path = path.trim().trim_end_matches(',').trim();
    let path = if path.starts_with("::prost::alloc::boxed::Box<") {
        generic_argument(path)
            .context("Box without argument")?
            .trim()
    } else {
        path
    };
    let mut segments: Vec<&str> = dir.split('/').collect();
    let mut parts: Vec<&str> = path.split("::").collect();
    let name = parts.pop().context("empty path")?;
    for part in parts {
        match part {
            "super" => {
                segments.pop().context("path leaves the crate")?;
            }
            "crate" => segments.clear(),
            other => segments.push(other),
        }
    }
    Ok(format!("k8s.io.{}.{name}", segments.join(".")))
}

/// Parses one `#[prost(...)]` field: its shape, type, and number.
fn parse_field(
    dir: &str,
    attribute: &str,
    declaration: &str,
) -> anyhow::Result<(Shape, String, u32)> {
    let inner = attribute
        .trim()
        .strip_prefix("#[prost(")
        .and_then(|a| a.strip_suffix(")]"))
        .with_context(|| format!("unexpected attribute {attribute}"))?;
    let tag_at = inner.find("tag = \"").context("no tag")? + "tag = \"".len();
    let number: u32 = inner[tag_at..]
        .split('"')
        .next()
        .context("unterminated tag")?
        .parse()?;
    let rust_type = declaration
        .split_once(':')
        .map(|(_, t)| t.trim().trim_end_matches(',').trim())
        .context("no type")?;
    let scalar = |kind: &str| -> anyhow::Result<String> {
        match kind {
            "string" | "int32" | "int64" | "bool" | "bytes" | "double" => Ok(kind.to_owned()),
            other => bail!("scalar type {other} is not handled"),
        }
    };
    if let Some(rest) = inner.strip_prefix("btree_map = \"") {
        let (key, value) = rest
            .split('"')
            .next()
            .and_then(|kv| kv.split_once(", "))
            .context("map without types")?;
        ensure!(key == "string", "map key {key} is not a string");
        let ty = if value == "message" {
            let argument = generic_argument(rust_type).context("map without arguments")?;
            let (_, value_type) = argument.split_once(',').context("map without value type")?;
            resolve(dir, value_type)?
        } else {
            scalar(value)?
        };
        return Ok((Shape::Map, ty, number));
    }
    let kind = inner.split(',').next().unwrap_or_default();
    let kind = kind.split(" = ").next().unwrap_or_default().trim();
    let shape = if inner.contains(", repeated") {
        Shape::List
    } else {
        Shape::One
    };
    let ty = if kind == "message" {
        resolve(
            dir,
            generic_argument(rust_type).context("message without type")?,
        )?
    } else {
        scalar(kind)?
    };
    Ok((shape, ty, number))
}

/// Parses the messages of one prost-generated file.
fn parse_messages(dir: &str, text: &str) -> anyhow::Result<Vec<PbMessage>> {
    let mut messages = Vec::new();
    let mut docs: Vec<String> = Vec::new();
    let mut current: Option<PbMessage> = None;
    let mut attribute: Option<String> = None;
    let mut declaration: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(text) = declaration.as_mut() {
            text.push(' ');
            text.push_str(trimmed);
        } else if let Some(doc) = trimmed.strip_prefix("///") {
            docs.push(doc.trim().to_owned());
            continue;
        } else if trimmed.starts_with("#[prost(") {
            attribute = Some(trimmed.to_owned());
            continue;
        } else if trimmed.starts_with("#[") {
            continue;
        } else if let Some(name) = trimmed
            .strip_prefix("pub struct ")
            .and_then(|r| r.strip_suffix(" {}"))
        {
            messages.push(PbMessage {
                dir: dir.to_owned(),
                name: name.to_owned(),
                list_wrapper: false,
                fields: Vec::new(),
            });
            docs.clear();
            continue;
        } else if let Some(name) = trimmed
            .strip_prefix("pub struct ")
            .and_then(|r| r.strip_suffix(" {"))
        {
            let list_wrapper = docs.iter().any(|d| d.contains("+protobuf.nullable=true"));
            current = Some(PbMessage {
                dir: dir.to_owned(),
                name: name.to_owned(),
                list_wrapper,
                fields: Vec::new(),
            });
            docs.clear();
            continue;
        } else if line.starts_with('}') {
            if let Some(message) = current.take() {
                messages.push(message);
            }
            docs.clear();
            continue;
        } else if current.is_some() && trimmed.starts_with("pub ") {
            declaration = Some(trimmed.to_owned());
        } else {
            docs.clear();
            continue;
        }
        // A field declaration, possibly spread over lines: complete at a top-level `,`.
        let Some(text) = declaration.as_deref() else {
            continue;
        };
        let depth = text.matches('<').count() as i64 - text.matches('>').count() as i64;
        if !(text.ends_with(',') && depth == 0) {
            continue;
        }
        let text = declaration.take().unwrap_or_default();
        let attr = attribute
            .take()
            .with_context(|| format!("{dir}: field without #[prost]: {text}"))?;
        let (shape, ty, number) =
            parse_field(dir, &attr, &text).with_context(|| format!("{dir}: {text}"))?;
        let rust_name = text
            .strip_prefix("pub ")
            .and_then(|t| t.split(':').next())
            .unwrap_or_default()
            .trim_start_matches("r#")
            .to_owned();
        let doc_word = docs
            .iter()
            .find(|d| !d.is_empty())
            .and_then(|d| d.split_whitespace().next())
            .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '$' && c != '-'))
            .map(str::to_owned);
        docs.clear();
        if let Some(message) = current.as_mut() {
            message.fields.push(PbField {
                number,
                rust_name,
                doc_word,
                shape,
                ty,
            });
        }
    }
    for message in &mut messages {
        message.fields.sort_by_key(|f| f.number);
        message.list_wrapper &= message.fields.len() == 1
            && message.fields[0].shape == Shape::List
            && message.fields[0].number == 1;
    }
    Ok(messages)
}

/// Every message the table holds, by full name.
fn k8s_pb_messages(root: &Path) -> anyhow::Result<BTreeMap<String, PbMessage>> {
    let mut all = BTreeMap::new();
    for (dir, text) in sources(root)? {
        if !included(&dir) {
            continue;
        }
        for message in parse_messages(&dir, &text)? {
            all.insert(message.full_name(), message);
        }
    }
    for message in all.values() {
        for field in &message.fields {
            if field.ty.contains('.') {
                ensure!(
                    all.contains_key(&field.ty),
                    "{}.{} refers to {}, which the table leaves out",
                    message.full_name(),
                    field.rust_name,
                    field.ty
                );
            }
        }
    }
    Ok(all)
}

/// Lowercase without `_`, `-` and `$`: how prost's names, JSON names and doc words compare.
fn normalized(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '_' | '-' | '$'))
        .flat_map(char::to_lowercase)
        .collect()
}

fn lower_camel(snake: &str) -> String {
    let mut out = String::new();
    for (i, part) in snake.split('_').enumerate() {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            if i == 0 {
                out.push(first);
            } else {
                out.extend(first.to_uppercase());
            }
            out.extend(chars);
        }
    }
    out
}

/// Go facts by lowercase `<package>.<type>`.
fn go_index(go: &GoTypes) -> HashMap<String, &Vec<GoField>> {
    go.iter().map(|(k, v)| (k.to_lowercase(), v)).collect()
}

fn apiextensions_facts() -> anyhow::Result<HashMap<(String, u32), (String, String)>> {
    let mut facts = HashMap::new();
    for line in apiextensions::FIELDS
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [message, number, json, rule] = parts.as_slice() else {
            bail!("bad apiextensions fact {line:?}");
        };
        facts.insert(
            ((*message).to_owned(), number.parse()?),
            ((*json).to_owned(), (*rule).to_owned()),
        );
    }
    Ok(facts)
}

/// How many fields took their JSON name from each source.
#[derive(Debug, Default)]
struct Provenance {
    go: usize,
    transcribed: usize,
    doc: usize,
    camel: usize,
    /// The fields whose names were guessed (`Message.field`), for review.
    guessed: Vec<String>,
}

/// The table text for these messages and Go facts.
fn render(
    messages: &BTreeMap<String, PbMessage>,
    go: &GoTypes,
) -> anyhow::Result<(String, Provenance)> {
    let go = go_index(go);
    let transcribed = apiextensions_facts()?;
    let mut provenance = Provenance::default();
    let mut out = String::from(
        "# The protobuf schema of the Kubernetes API, generated by control-plane/src/apiserver/protobuf/generator\n\
         # from k8s-pb and kubectl's Go types; do not edit. A message line is its full name (and `list` when its\n\
         # JSON form is the bare list of its one field); each field line, tab-indented: number, JSON name,\n\
         # one|list|map|inline (a message whose fields JSON holds in its parent's: Go's `json:\",inline\"`; its\n\
         # JSON name is -), type (a scalar, a message in the same package, or a full name), and how a zero value\n\
         # is written: ptr (whenever present), omit (left out), keep (always), - (not a scalar).\n",
    );
    for (full_name, message) in messages {
        let package = package_of(&message.dir);
        out.push_str(full_name);
        if message.list_wrapper {
            out.push_str("\tlist");
        }
        out.push('\n');
        let go_fields =
            go.get(&format!("{}.{}", go_package(&message.dir), message.name).to_lowercase());
        for field in &message.fields {
            let from_go =
                go_fields.and_then(|fields| fields.iter().find(|f| f.number == field.number));
            let from_transcript = (message.dir
                == "apiextensions_apiserver/pkg/apis/apiextensions/v1")
                .then(|| transcribed.get(&(message.name.clone(), field.number)))
                .flatten();
            let scalar = !field.ty.contains('.') && field.shape == Shape::One;
            let inline = from_go.is_some_and(|g| g.inline);
            let (json, rule) = if inline {
                provenance.go += 1;
                ("-".to_owned(), "-".to_owned())
            } else if let Some(go) = from_go.filter(|g| !g.json.is_empty() && g.json != "-") {
                provenance.go += 1;
                let rule = if go.pointer {
                    "ptr"
                } else if go.omitempty {
                    "omit"
                } else {
                    "keep"
                };
                (go.json.clone(), rule.to_owned())
            } else if let Some((json, rule)) = from_transcript {
                provenance.transcribed += 1;
                (json.clone(), rule.clone())
            } else if let Some(word) = field
                .doc_word
                .as_ref()
                .filter(|w| normalized(w) == normalized(&field.rust_name))
            {
                provenance.doc += 1;
                let json = json_case(word);
                provenance.guessed.push(format!("{full_name}.{json}"));
                (json, "ptr".to_owned())
            } else {
                provenance.camel += 1;
                provenance
                    .guessed
                    .push(format!("{full_name}.{} (camel)", field.rust_name));
                (lower_camel(&field.rust_name), "ptr".to_owned())
            };
            ensure!(
                inline || normalized(&json) == normalized(&field.rust_name),
                "{full_name} field {}: JSON name {json} does not match {}",
                field.number,
                field.rust_name
            );
            let rule = if scalar { rule } else { "-".to_owned() };
            let ty = match field.ty.strip_prefix(&format!("{package}.")) {
                Some(local) if !local.contains('.') => local,
                _ => &field.ty,
            };
            let shape = if inline {
                ensure!(
                    field.shape == Shape::One && field.ty.contains('.'),
                    "{full_name} field {} is inline but not a message",
                    field.number
                );
                "inline"
            } else {
                field.shape.as_str()
            };
            writeln!(out, "\t{}\t{json}\t{shape}\t{ty}\t{rule}", field.number)?;
        }
    }
    Ok((out, provenance))
}

/// The table without its JSON names and zero rules: what `k8s-pb` alone decides.
fn skeleton(table: &str) -> String {
    table
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|line| match line.strip_prefix('\t') {
            Some(field) => {
                let columns: Vec<&str> = field.split('\t').collect();
                match columns.as_slice() {
                    [number, _json, shape, ty, _rule] => {
                        // Whether a field is inline is the Go types' to say, not k8s-pb's.
                        let shape = if *shape == "inline" { "one" } else { shape };
                        format!("\t{number}\t{shape}\t{ty}")
                    }
                    _ => format!("malformed: {line}"),
                }
            }
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "rewrites schema.tsv from k8s-pb and kubectl's Go types"]
fn regenerate_schema_table() -> anyhow::Result<()> {
    let messages = k8s_pb_messages(&k8s_pb_source()?)?;
    let go = go_types::read(Path::new(KUBECTL))?;
    let (table, provenance) = render(&messages, &go)?;
    std::fs::write(table_path(), &table)?;
    eprintln!(
        "wrote {} messages; JSON names: {provenance:?}",
        messages.len()
    );
    Ok(())
}

#[test]
fn schema_table_matches_k8s_pb() -> anyhow::Result<()> {
    let messages = k8s_pb_messages(&k8s_pb_source()?)?;
    let (fresh, _) = render(&messages, &GoTypes::new())?;
    let checked_in = std::fs::read_to_string(table_path())?;
    let (fresh, checked_in) = (skeleton(&fresh), skeleton(&checked_in));
    if fresh != checked_in {
        let first = fresh
            .lines()
            .zip(checked_in.lines())
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("k8s-pb: {a:?}, table: {b:?}"))
            .unwrap_or_else(|| "one is longer".to_owned());
        bail!(
            "schema.tsv is stale relative to k8s-pb {K8S_PB_VERSION} ({first}); rerun \
             `cargo test -p corten-control-plane --lib protobuf::generator -- --ignored`"
        );
    }
    Ok(())
}

#[test]
fn prost_paths_resolve_to_proto_names() -> anyhow::Result<()> {
    assert_eq!(
        resolve(
            "api/core/v1",
            "super::super::super::apimachinery::pkg::apis::meta::v1::ObjectMeta"
        )?,
        "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    assert_eq!(
        resolve("api/core/v1", "PodSpec")?,
        "k8s.io.api.core.v1.PodSpec"
    );
    assert_eq!(
        resolve(
            "apiextensions_apiserver/pkg/apis/apiextensions/v1",
            "::prost::alloc::boxed::Box<JsonSchemaProps>"
        )?,
        "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JsonSchemaProps"
    );
    let (shape, ty, number) = parse_field(
        "api/core/v1",
        "#[prost(btree_map = \"string, message\", tag = \"1\")]",
        "pub limits: ::prost::alloc::collections::BTreeMap<::prost::alloc::string::String, super::super::super::apimachinery::pkg::api::resource::Quantity>,",
    )?;
    assert_eq!(
        (shape, ty.as_str(), number),
        (
            Shape::Map,
            "k8s.io.apimachinery.pkg.api.resource.Quantity",
            1
        )
    );
    assert_eq!(lower_camel("pod_ip"), "podIp");
    assert_eq!(json_case("AllocatedResources"), "allocatedResources");
    assert_eq!(json_case("URLPath"), "urlPath");
    assert_eq!(json_case("podIP"), "podIP");
    Ok(())
}
