//! Reads the struct tags of Kubernetes' Go API types out of a Go binary's type metadata
//! (kubectl carries every `k8s.io/api` type it can encode, and Go keeps each struct's
//! field names, field types and tags for `reflect`), so that the schema table knows what
//! only the Go source says: each field's JSON name, whether it is a pointer, and whether it
//! is `omitempty`.
//!
//! Test-only tooling for the table generator; it must not be linked into the server. It
//! understands the `abi.Type` layout of Go 1.21–1.24 on 64-bit little-endian ELF and fails
//! loudly on anything else rather than guessing.
use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, ensure, Context};

/// One field of a Go struct that has a protobuf tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoField {
    /// The protobuf field number (from the `protobuf:"..."` tag).
    pub number: u32,
    /// The JSON name (from the `json:"..."` tag).
    pub json: String,
    /// Whether the field's Go type is a pointer (`*int32`, `*string`, ...).
    pub pointer: bool,
    /// Whether the JSON tag says `omitempty`.
    pub omitempty: bool,
    /// Whether the field is an embedded struct whose fields JSON writes inline
    /// (`json:",inline"`, e.g. `LocalObjectReference` in `ConfigMapKeySelector`).
    pub inline: bool,
}

/// Struct fields by `"<package path>.<TypeName>"` (e.g. `k8s.io/api/apps/v1.DeploymentSpec`).
pub type GoTypes = BTreeMap<String, Vec<GoField>>;

// The parts of Go's runtime type layout (internal/abi) that are read here.
const KIND_MASK: u8 = 0x1f;
const KIND_ARRAY: u8 = 17;
const KIND_MAP: u8 = 21;
const KIND_POINTER: u8 = 22;
const KIND_SLICE: u8 = 23;
const KIND_STRUCT: u8 = 25;
const TFLAG_UNCOMMON: u8 = 1;
const TFLAG_EXTRA_STAR: u8 = 2;
const TYPE_SIZE: u64 = 48;
const STRUCT_TYPE_SIZE: u64 = 80;
const STRUCT_FIELD_SIZE: u64 = 24;
/// Fields a struct may have before the metadata is taken to be misread.
const MAX_FIELDS: u64 = 4096;

struct Section {
    name: String,
    kind: u32,
    address: u64,
    offset: u64,
    size: u64,
}

/// A loaded ELF image, addressed by virtual address.
struct Image {
    bytes: Vec<u8>,
    sections: Vec<Section>,
}

fn le_u16(bytes: &[u8], at: usize) -> anyhow::Result<u16> {
    let slice = bytes.get(at..at + 2).context("ELF header truncated")?;
    Ok(u16::from_le_bytes([slice[0], slice[1]]))
}

fn le_u32(bytes: &[u8], at: usize) -> anyhow::Result<u32> {
    let slice = bytes.get(at..at + 4).context("ELF data truncated")?;
    let mut word = [0u8; 4];
    word.copy_from_slice(slice);
    Ok(u32::from_le_bytes(word))
}

fn le_u64(bytes: &[u8], at: usize) -> anyhow::Result<u64> {
    let slice = bytes.get(at..at + 8).context("ELF data truncated")?;
    let mut word = [0u8; 8];
    word.copy_from_slice(slice);
    Ok(u64::from_le_bytes(word))
}

impl Image {
    fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        ensure!(
            bytes.starts_with(b"\x7fELF"),
            "{} is not ELF",
            path.display()
        );
        ensure!(
            bytes.get(4) == Some(&2) && bytes.get(5) == Some(&1),
            "{} is not 64-bit little-endian ELF",
            path.display()
        );
        let table = usize::try_from(le_u64(&bytes, 0x28)?)?;
        let entry = usize::from(le_u16(&bytes, 0x3a)?);
        let count = usize::from(le_u16(&bytes, 0x3c)?);
        let names_index = usize::from(le_u16(&bytes, 0x3e)?);
        let mut raw = Vec::new();
        for i in 0..count {
            let at = table + i * entry;
            raw.push((
                le_u32(&bytes, at)?,
                le_u32(&bytes, at + 4)?,
                le_u64(&bytes, at + 16)?,
                le_u64(&bytes, at + 24)?,
                le_u64(&bytes, at + 32)?,
            ));
        }
        let names_offset = usize::try_from(raw.get(names_index).context("no section names")?.3)?;
        let mut sections = Vec::new();
        for (name, kind, address, offset, size) in raw {
            let start = names_offset + usize::try_from(name)?;
            let tail = bytes.get(start..).context("section name out of range")?;
            let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
            sections.push(Section {
                name: String::from_utf8_lossy(&tail[..end]).into_owned(),
                kind,
                address,
                offset,
                size,
            });
        }
        Ok(Self { bytes, sections })
    }

    fn section(&self, name: &str) -> anyhow::Result<&Section> {
        self.sections
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no {name} section: not a Go binary?"))
    }

    /// The file offset of a virtual address (in a section with file contents).
    fn offset(&self, address: u64) -> anyhow::Result<usize> {
        const NOBITS: u32 = 8;
        let section = self
            .sections
            .iter()
            .find(|s| s.kind != NOBITS && s.address <= address && address < s.address + s.size)
            .with_context(|| format!("address {address:#x} is in no loaded section"))?;
        Ok(usize::try_from(address - section.address + section.offset)?)
    }

    fn u8_at(&self, address: u64) -> anyhow::Result<u8> {
        let at = self.offset(address)?;
        self.bytes.get(at).copied().context("address past the end")
    }

    fn u64_at(&self, address: u64) -> anyhow::Result<u64> {
        le_u64(&self.bytes, self.offset(address)?)
    }

    fn i32_at(&self, address: u64) -> anyhow::Result<i32> {
        Ok(le_u32(&self.bytes, self.offset(address)?)? as i32)
    }

    fn varint_at(&self, address: u64) -> anyhow::Result<(u64, u64)> {
        let mut value = 0u64;
        for i in 0..10u64 {
            let byte = self.u8_at(address + i)?;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok((value, i + 1));
            }
        }
        bail!("varint too long at {address:#x}")
    }

    fn text_at(&self, address: u64, len: u64) -> anyhow::Result<String> {
        let start = self.offset(address)?;
        let end = start + usize::try_from(len)?;
        let bytes = self.bytes.get(start..end).context("name past the end")?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// An `abi.Name`: flags, varint length, text, then (flag 2) a varint-length tag.
    fn name_at(&self, address: u64) -> anyhow::Result<(String, Option<String>)> {
        let flags = self.u8_at(address)?;
        let (len, width) = self.varint_at(address + 1)?;
        let text = self.text_at(address + 1 + width, len)?;
        let tag = if flags & 2 != 0 {
            let at = address + 1 + width + len;
            let (tag_len, tag_width) = self.varint_at(at)?;
            Some(self.text_at(at + tag_width, tag_len)?)
        } else {
            None
        };
        Ok((text, tag))
    }
}

/// The value of `key:"..."` in a Go struct tag.
fn tag_value<'t>(tag: &'t str, key: &str) -> Option<&'t str> {
    let needle = format!("{key}:\"");
    let start = tag.find(&needle)? + needle.len();
    let rest = &tag[start..];
    Some(&rest[..rest.find('"')?])
}

/// Reads every struct type of the `k8s.io/` packages in the Go binary at `path`.
pub fn read(path: &Path) -> anyhow::Result<GoTypes> {
    let image = Image::load(path)?;
    // Type descriptors start at the beginning of .rodata (the linker's `runtime.types`), and
    // `.typelink` lists offsets of the unnamed types (pointers, slices, maps) from there.
    let types = image.section(".rodata")?.address;
    let links = image.section(".typelink")?;
    let start = usize::try_from(links.offset)?;
    let end = start + usize::try_from(links.size)?;
    let mut pending: Vec<u64> = image
        .bytes
        .get(start..end)
        .context(".typelink out of range")?
        .chunks_exact(4)
        .map(|w| types.wrapping_add_signed(i64::from(i32::from_le_bytes([w[0], w[1], w[2], w[3]]))))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = GoTypes::new();
    while let Some(address) = pending.pop() {
        if address == 0 || !seen.insert(address) {
            continue;
        }
        let tflag = image.u8_at(address + 20)?;
        let kind = image.u8_at(address + 23)? & KIND_MASK;
        match kind {
            KIND_POINTER | KIND_SLICE | KIND_ARRAY => {
                pending.push(image.u64_at(address + TYPE_SIZE)?)
            }
            KIND_MAP => {
                pending.push(image.u64_at(address + TYPE_SIZE)?);
                pending.push(image.u64_at(address + TYPE_SIZE + 8)?);
            }
            KIND_STRUCT => {
                let fields_at = image.u64_at(address + TYPE_SIZE + 8)?;
                let count = image.u64_at(address + TYPE_SIZE + 16)?;
                ensure!(
                    count <= MAX_FIELDS,
                    "struct at {address:#x} has {count} fields: misread"
                );
                let mut fields = Vec::new();
                for i in 0..count {
                    let field = fields_at + i * STRUCT_FIELD_SIZE;
                    let (_, tag) = image.name_at(image.u64_at(field)?)?;
                    let field_type = image.u64_at(field + 8)?;
                    pending.push(field_type);
                    let Some(tag) = tag else { continue };
                    let (Some(json), Some(proto)) =
                        (tag_value(&tag, "json"), tag_value(&tag, "protobuf"))
                    else {
                        continue;
                    };
                    let Some(Ok(number)) = proto.split(',').nth(1).map(str::parse::<u32>) else {
                        continue;
                    };
                    let mut json_parts = json.split(',');
                    let json_name = json_parts.next().unwrap_or_default().to_owned();
                    let options: Vec<&str> = json_parts.collect();
                    fields.push(GoField {
                        number,
                        inline: json_name.is_empty() && options.contains(&"inline"),
                        json: json_name,
                        pointer: image.u8_at(field_type + 23)? & KIND_MASK == KIND_POINTER,
                        omitempty: options.contains(&"omitempty"),
                    });
                }
                if tflag & TFLAG_UNCOMMON == 0 {
                    continue; // an unnamed struct: nothing to look it up by
                }
                let package_offset = image.i32_at(address + STRUCT_TYPE_SIZE)?;
                if package_offset == 0 {
                    continue;
                }
                let (package, _) =
                    image.name_at(types.wrapping_add_signed(i64::from(package_offset)))?;
                let (mut name, _) = image
                    .name_at(types.wrapping_add_signed(i64::from(image.i32_at(address + 40)?)))?;
                if tflag & TFLAG_EXTRA_STAR != 0 {
                    name.remove(0);
                }
                let short = name.rsplit('.').next().unwrap_or(&name).to_owned();
                if package.starts_with("k8s.io/") && !short.contains('[') {
                    out.insert(format!("{package}.{short}"), fields);
                }
            }
            _ => {}
        }
    }
    ensure!(
        out.contains_key("k8s.io/api/core/v1.PodSpec"),
        "no k8s.io/api/core/v1.PodSpec in {}: not kubectl, or an unsupported Go version",
        path.display()
    );
    Ok(out)
}
