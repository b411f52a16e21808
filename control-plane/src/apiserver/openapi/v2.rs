//! The Swagger 2.0 document of `/openapi/v2`, built from the registry as kube-apiserver
//! builds its own:
//!
//! - `definitions`: every built-in type and every type it refers to, from k8s-openapi, under
//!   upstream's names (`io.k8s.api.core.v1.Pod`), with upstream's vendor extensions
//!   ([`super::extensions`]); a `<Kind>List` for each served kind; each served CRD version's
//!   schema as `<reversed group>.<version>.<Kind>` with `apiVersion`, `kind` and `metadata`
//!   (a reference to `ObjectMeta`) added. Served kinds carry
//!   `x-kubernetes-group-version-kind`, which is how kubectl finds a kind's schema.
//! - `paths`: per resource the collection (list, create, deletecollection), the object (read,
//!   replace, patch, delete), the list across namespaces and the subresources, each operation
//!   tagged with `x-kubernetes-group-version-kind` and `x-kubernetes-action`. Built-in kinds'
//!   PATCH declares `fieldValidation`, which this server enforces for them; custom kinds' does
//!   not, because their unknown fields are pruned without being reported, so kubectl checks
//!   custom resources against their schema itself.
//!
//! Must not encode the document ([`super::gnostic`] does) or cache it ([`super::v2_document`]).
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use super::{
    extensions, gv_path,
    swagger::{self, reference, OBJECT_META},
};
use crate::apiserver::resources::{Check, Registry, ResourceDef};

const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
const SCALE: &str = "io.k8s.api.autoscaling.v1.Scale";
const BINDING: &str = "io.k8s.api.core.v1.Binding";
const EVICTION: &str = "io.k8s.api.policy.v1.Eviction";
const TOKEN_REQUEST: &str = "io.k8s.api.authentication.v1.TokenRequest";

const API_VERSION_TEXT: &str =
    "The versioned schema of this representation of an object: `group/version`, or `version` for the core group.";
const KIND_TEXT: &str = "The REST resource this object represents, in CamelCase.";

/// The whole document for the resources the registry serves now.
pub fn document(registry: &Registry, version: &str) -> Value {
    let served = registry.all();
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut builtin: Vec<(String, &ResourceDef)> = Vec::new();
    for def in &served {
        if let Some(register) = def.openapi {
            if let Some(name) = definition_name(&Value::from(register(&mut generator))) {
                builtin.push((name, def));
            }
        }
    }
    // The types that operations take and answer besides the served kinds.
    {
        use k8s_openapi::{
            api::{
                authentication::v1::TokenRequest, autoscaling::v1::Scale, core::v1::Binding,
                policy::v1::Eviction,
            },
            apimachinery::pkg::apis::meta::v1::{DeleteOptions, ListMeta, Patch, Status},
        };
        generator.subschema_for::<ListMeta>();
        generator.subschema_for::<Status>();
        generator.subschema_for::<DeleteOptions>();
        generator.subschema_for::<Patch>();
        generator.subschema_for::<Scale>();
        generator.subschema_for::<Binding>();
        generator.subschema_for::<Eviction>();
        generator.subschema_for::<TokenRequest>();
    }
    let mut definitions: Map<String, Value> = generator
        .take_definitions(true)
        .into_iter()
        .map(|(name, schema)| {
            let mut converted = swagger::to_swagger(&schema);
            upstream_form(&name, &mut converted);
            extensions::apply(&name, &mut converted);
            (name, converted)
        })
        .collect();

    let mut paths = Map::new();
    let mut builtin_group_versions: Vec<(&str, &str)> = Vec::new();
    for (name, def) in &builtin {
        tag(
            &mut definitions,
            name,
            gvk(def.group, def.version, def.kind),
        );
        definitions.insert(format!("{name}List"), list_definition(name, def));
        add_paths(&mut paths, def, name, true);
        if !builtin_group_versions.contains(&(def.group, def.version)) {
            builtin_group_versions.push((def.group, def.version));
        }
    }
    tag(&mut definitions, SCALE, gvk("autoscaling", "v1", "Scale"));
    tag(&mut definitions, BINDING, gvk("", "v1", "Binding"));
    tag(&mut definitions, EVICTION, gvk("policy", "v1", "Eviction"));
    tag(
        &mut definitions,
        TOKEN_REQUEST,
        gvk("authentication.k8s.io", "v1", "TokenRequest"),
    );
    tag(&mut definitions, STATUS, gvk("", "v1", "Status"));
    for (group, version) in builtin_group_versions {
        tag(
            &mut definitions,
            DELETE_OPTIONS,
            gvk(group, version, "DeleteOptions"),
        );
    }

    for def in &served {
        let Check::Schema(schema) = &def.check else {
            continue;
        };
        if def.openapi.is_some() {
            continue;
        }
        let name = custom_definition_name(def.group, def.version, def.kind);
        definitions.insert(name.clone(), custom_definition(def, schema));
        definitions.insert(format!("{name}List"), list_definition(&name, def));
        add_paths(&mut paths, def, &name, false);
    }

    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": version},
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": {"BearerToken": {
            "type": "apiKey", "name": "authorization", "in": "header",
            "description": "Bearer Token authentication",
        }},
        "security": [{"BearerToken": []}],
    })
}

/// The definition a schemars reference points at.
fn definition_name(reference: &Value) -> Option<String> {
    reference
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .map(str::to_owned)
}

/// A custom kind's definition name: `stable.example.com`, `v1`, `CronTab` →
/// `com.example.stable.v1.CronTab`.
pub fn custom_definition_name(group: &str, version: &str, kind: &str) -> String {
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!("{}.{version}.{kind}", reversed.join("."))
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

/// Adds a group-version-kind to a definition's `x-kubernetes-group-version-kind` list.
fn tag(definitions: &mut Map<String, Value>, name: &str, gvk: Value) {
    let Some(Value::Object(definition)) = definitions.get_mut(name) else {
        return;
    };
    let list = definition
        .entry("x-kubernetes-group-version-kind")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = list {
        if !list.contains(&gvk) {
            list.push(gvk);
        }
    }
}

/// Where upstream publishes a type differently from k8s-openapi's schema of it.
fn upstream_form(name: &str, schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    match name {
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
            object.insert("type".into(), Value::from("string"));
            object.insert("format".into(), Value::from("int-or-string"));
        }
        "io.k8s.apimachinery.pkg.api.resource.Quantity" => {
            object.insert("type".into(), Value::from("string"));
        }
        // Any JSON value, not only objects.
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON" => {
            object.remove("type");
        }
        _ => {}
    }
}

/// A served CRD version's schema as a definition of the document.
fn custom_definition(def: &ResourceDef, schema: &Value) -> Value {
    let mut converted = swagger::to_swagger(schema);
    if let Some(object) = converted.as_object_mut() {
        object.insert("type".into(), Value::from("object"));
        let preserves = object
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true);
        // With every field preserved, the object stays a map that kubectl does not check.
        if !preserves {
            let properties = object
                .entry("properties")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(properties) = properties {
                properties.insert(
                    "apiVersion".into(),
                    json!({"type": "string", "description": API_VERSION_TEXT}),
                );
                properties.insert(
                    "kind".into(),
                    json!({"type": "string", "description": KIND_TEXT}),
                );
                let mut metadata = reference(OBJECT_META);
                metadata["description"] = Value::from("Standard object metadata.");
                properties.insert("metadata".into(), metadata);
            }
        }
        object.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([gvk(def.group, def.version, def.kind)]),
        );
    }
    converted
}

/// `<Kind>List`: the list of a kind's objects that list operations answer.
fn list_definition(item: &str, def: &ResourceDef) -> Value {
    let mut metadata = reference(LIST_META);
    metadata["description"] = Value::from("Standard list metadata.");
    json!({
        "description": format!("{kind}List is a list of {kind} objects.", kind = def.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": API_VERSION_TEXT},
            "items": {
                "type": "array",
                "items": reference(item),
                "description": format!("The {} objects.", def.kind),
            },
            "kind": {"type": "string", "description": KIND_TEXT},
            "metadata": metadata,
        },
        "x-kubernetes-group-version-kind": [gvk(def.group, def.version, &format!("{}List", def.kind))],
    })
}

/// Upstream's operation-id spelling of a group version: `CoreV1`, `AppsV1`,
/// `RbacAuthorizationV1`, `StableExampleComV1`.
fn operation_group(group: &str, version: &str) -> String {
    let group = if group.is_empty() {
        "core"
    } else {
        group.strip_suffix(".k8s.io").unwrap_or(group)
    };
    let mut out = String::new();
    for part in group.split(['.', '-']).chain([version]) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out
}

/// An operation under construction.
struct Operation {
    action: &'static str,
    id: String,
    description: String,
    parameters: Vec<Value>,
    responses: Value,
    consumes: Vec<&'static str>,
    produces: Vec<&'static str>,
}

impl Operation {
    fn into_json(self, tag: &str, gvk: &Value) -> Value {
        let mut op = json!({
            "description": self.description,
            "operationId": self.id,
            "tags": [tag],
            "consumes": self.consumes,
            "produces": self.produces,
            "schemes": ["https"],
            "responses": self.responses,
            "x-kubernetes-action": self.action,
            "x-kubernetes-group-version-kind": gvk,
        });
        if !self.parameters.is_empty() {
            op["parameters"] = Value::Array(self.parameters);
        }
        op
    }
}

fn query(name: &str, kind: &str) -> Value {
    json!({"name": name, "in": "query", "type": kind, "uniqueItems": true})
}

fn path_parameter(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "type": "string",
        "uniqueItems": true, "description": description})
}

fn body(definition: &str) -> Value {
    json!({"name": "body", "in": "body", "required": true, "schema": reference(definition)})
}

fn responses(codes: &[(&str, &str)], definition: &str) -> Value {
    let mut out = Map::new();
    for (code, text) in codes {
        out.insert(
            (*code).to_owned(),
            json!({"description": text, "schema": reference(definition)}),
        );
    }
    out.insert("401".into(), json!({"description": "Unauthorized"}));
    Value::Object(out)
}

const OK: (&str, &str) = ("200", "OK");
const CREATED: (&str, &str) = ("201", "Created");
const ACCEPTED: (&str, &str) = ("202", "Accepted");
const JSON: &[&str] = &["application/json"];
const ANY: &[&str] = &["*/*"];

fn list_parameters() -> Vec<Value> {
    [
        ("allowWatchBookmarks", "boolean"),
        ("continue", "string"),
        ("fieldSelector", "string"),
        ("labelSelector", "string"),
        ("limit", "integer"),
        ("resourceVersion", "string"),
        ("resourceVersionMatch", "string"),
        ("sendInitialEvents", "boolean"),
        ("timeoutSeconds", "integer"),
        ("watch", "boolean"),
    ]
    .iter()
    .map(|(name, kind)| query(name, kind))
    .collect()
}

fn delete_parameters() -> Vec<Value> {
    vec![
        body(DELETE_OPTIONS),
        query("dryRun", "string"),
        query("gracePeriodSeconds", "integer"),
        query("orphanDependents", "boolean"),
        query("propagationPolicy", "string"),
    ]
}

/// The query parameters of writes: the built-in kinds also take `fieldValidation`.
fn write_parameters(definition: &str, field_validation: bool) -> Vec<Value> {
    let mut parameters = vec![
        body(definition),
        query("dryRun", "string"),
        query("fieldManager", "string"),
    ];
    if field_validation {
        parameters.push(query("fieldValidation", "string"));
    }
    parameters
}

fn read(id: String, kind: &str, definition: &str) -> Operation {
    Operation {
        action: "get",
        id,
        description: format!("read the specified {kind}"),
        parameters: Vec::new(),
        responses: responses(&[OK], definition),
        consumes: ANY.to_vec(),
        produces: JSON.to_vec(),
    }
}

fn replace(id: String, kind: &str, definition: &str, field_validation: bool) -> Operation {
    Operation {
        action: "put",
        id,
        description: format!("replace the specified {kind}"),
        parameters: write_parameters(definition, field_validation),
        responses: responses(&[OK, CREATED], definition),
        consumes: ANY.to_vec(),
        produces: JSON.to_vec(),
    }
}

fn patch(id: String, kind: &str, definition: &str, builtin: bool) -> Operation {
    let mut parameters = write_parameters(PATCH, builtin);
    parameters.push(query("force", "boolean"));
    let mut consumes = vec![
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/apply-patch+yaml",
    ];
    // Strategic merge patch is for built-in kinds only.
    if builtin {
        consumes.push("application/strategic-merge-patch+json");
    }
    Operation {
        action: "patch",
        id,
        description: format!("partially update the specified {kind}"),
        parameters,
        responses: responses(&[OK, CREATED], definition),
        consumes,
        produces: JSON.to_vec(),
    }
}

fn create(id: String, kind: &str, definition: &str, field_validation: bool) -> Operation {
    Operation {
        action: "post",
        id,
        description: format!("create a {kind}"),
        parameters: write_parameters(definition, field_validation),
        responses: responses(&[OK, CREATED, ACCEPTED], definition),
        consumes: ANY.to_vec(),
        produces: JSON.to_vec(),
    }
}

fn list(id: String, kind: &str, definition: &str) -> Operation {
    Operation {
        action: "list",
        id,
        description: format!("list or watch objects of kind {kind}"),
        parameters: list_parameters(),
        responses: responses(&[OK], &format!("{definition}List")),
        consumes: ANY.to_vec(),
        produces: vec!["application/json", "application/json;stream=watch"],
    }
}

/// Adds a resource's paths: collection, object, all namespaces, subresources.
fn add_paths(paths: &mut Map<String, Value>, def: &ResourceDef, definition: &str, builtin: bool) {
    let base = format!("/{}", gv_path(def.group, def.version));
    let (collection, scope) = if def.namespaced {
        (
            format!("{base}/namespaces/{{namespace}}/{}", def.plural),
            "Namespaced",
        )
    } else {
        (format!("{base}/{}", def.plural), "")
    };
    let object = format!("{collection}/{{name}}");
    let group_id = operation_group(def.group, def.version);
    let tag = {
        let mut tag = group_id.clone();
        if let Some(first) = tag.get(..1).map(str::to_lowercase) {
            tag.replace_range(..1, &first);
        }
        // `CoreV1` → `core_v1`: the version after an underscore, as upstream tags read.
        let split = tag.len() - def.version.len();
        format!("{}_{}", &tag[..split], def.version)
    };
    let kind = def.kind;
    let own = gvk(def.group, def.version, kind);
    let id = |verb: &str, suffix: &str| format!("{verb}{group_id}{scope}{kind}{suffix}");
    let mut scope_parameters = Vec::new();
    if def.namespaced {
        scope_parameters.push(path_parameter(
            "namespace",
            "object name and auth scope, such as for teams and projects",
        ));
    }
    scope_parameters.push(query("pretty", "string"));
    let mut object_parameters = vec![path_parameter("name", &format!("name of the {kind}"))];
    object_parameters.extend(scope_parameters.iter().cloned());

    let mut delete_collection = Operation {
        action: "deletecollection",
        id: format!("delete{group_id}Collection{scope}{kind}"),
        description: format!("delete collection of {kind}"),
        parameters: delete_parameters(),
        responses: responses(&[OK], STATUS),
        consumes: ANY.to_vec(),
        produces: JSON.to_vec(),
    };
    delete_collection.parameters.extend(list_parameters());
    paths.insert(
        collection,
        json!({
            "get": list(id("list", ""), kind, definition).into_json(&tag, &own),
            "post": create(id("create", ""), kind, definition, builtin).into_json(&tag, &own),
            "delete": delete_collection.into_json(&tag, &own),
            "parameters": scope_parameters,
        }),
    );
    let delete = Operation {
        action: "delete",
        id: id("delete", ""),
        description: format!("delete a {kind}"),
        parameters: delete_parameters(),
        responses: responses(&[OK, ACCEPTED], STATUS),
        consumes: ANY.to_vec(),
        produces: JSON.to_vec(),
    };
    paths.insert(
        object.clone(),
        json!({
            "get": read(id("read", ""), kind, definition).into_json(&tag, &own),
            "put": replace(id("replace", ""), kind, definition, builtin).into_json(&tag, &own),
            "patch": patch(id("patch", ""), kind, definition, builtin).into_json(&tag, &own),
            "delete": delete.into_json(&tag, &own),
            "parameters": object_parameters.clone(),
        }),
    );
    if def.namespaced {
        let all = list(
            format!("list{group_id}{kind}ForAllNamespaces"),
            kind,
            definition,
        );
        paths.insert(
            format!("{base}/{}", def.plural),
            json!({"get": all.into_json(&tag, &own), "parameters": [query("pretty", "string")]}),
        );
    }
    for sub in def.subresources {
        let path = format!("{object}/{sub}");
        let mut item = match *sub {
            "status" => json!({
                "get": read(id("read", "Status"), kind, definition).into_json(&tag, &own),
                "put": replace(id("replace", "Status"), kind, definition, builtin).into_json(&tag, &own),
                "patch": patch(id("patch", "Status"), kind, definition, builtin).into_json(&tag, &own),
            }),
            "scale" => {
                let scale = gvk("autoscaling", "v1", "Scale");
                json!({
                    "get": read(id("read", "Scale"), "Scale", SCALE).into_json(&tag, &scale),
                    "put": replace(id("replace", "Scale"), "Scale", SCALE, true).into_json(&tag, &scale),
                    "patch": patch(id("patch", "Scale"), "Scale", SCALE, true).into_json(&tag, &scale),
                })
            }
            "binding" => json!({
                "post": create(id("create", "Binding"), "Binding", BINDING, true)
                    .into_json(&tag, &gvk("", "v1", "Binding")),
            }),
            "eviction" => json!({
                "post": create(id("create", "Eviction"), "Eviction", EVICTION, true)
                    .into_json(&tag, &gvk("policy", "v1", "Eviction")),
            }),
            "token" => json!({
                "post": create(id("create", "Token"), "TokenRequest", TOKEN_REQUEST, true)
                    .into_json(&tag, &gvk("authentication.k8s.io", "v1", "TokenRequest")),
            }),
            _ => continue,
        };
        item["parameters"] = Value::Array(object_parameters.clone());
        paths.insert(path, item);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn crontab_registry() -> Registry {
        let registry = Registry::new();
        let crd = json!({
            "metadata": {"name": "crontabs.stable.example.com"},
            "spec": {"group": "stable.example.com", "scope": "Namespaced",
                "names": {"plural": "crontabs", "kind": "CronTab"},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                        "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                        "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                            "metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}}},
                            "spec": {"type": "object", "required": ["cronSpec"], "properties": {
                                "cronSpec": {"type": "string", "pattern": "^(\\d+|\\*)(/\\d+)?(\\s+(\\d+|\\*)(/\\d+)?){4}$"},
                                "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                                "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                                "mode": {"type": "string", "enum": ["a", "b"], "nullable": true},
                                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                            }},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        }}}},
                    {"name": "v2", "served": false, "storage": false}
                ]}
        });
        let Ok(defs) = crate::apiserver::crds::definitions(&crd) else {
            panic!("the CRD is valid");
        };
        registry.set_custom("crontabs.stable.example.com", defs);
        registry
    }

    /// Every `$ref` of a value, with where it is.
    fn references(value: &Value, path: &str, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    if key == "$ref" {
                        if let Some(target) = child.as_str() {
                            out.push((path.to_owned(), target.to_owned()));
                        }
                    } else {
                        references(child, &format!("{path}/{key}"), out);
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    references(item, &format!("{path}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_definition_is_swagger_2_and_every_reference_resolves() {
        let doc = document(&crontab_registry(), "v1.33.0");
        let Some(definitions) = doc["definitions"].as_object() else {
            panic!("definitions missing");
        };
        let mut found = Vec::new();
        for (name, schema) in definitions {
            swagger::violations(schema, name, &mut found);
        }
        assert!(found.is_empty(), "{found:#?}");
        let mut refs = Vec::new();
        references(&doc, "", &mut refs);
        assert!(refs.len() > 1000, "only {} references", refs.len());
        let dangling: Vec<_> = refs
            .iter()
            .filter(|(_, target)| {
                target
                    .strip_prefix("#/definitions/")
                    .is_none_or(|name| !definitions.contains_key(name))
            })
            .collect();
        assert!(dangling.is_empty(), "{dangling:#?}");
        // (`oneOf`, `anyOf` and `nullable` are property names of the CRD type's schema, so
        // `violations` looks for them as keywords, where they would matter.)
        assert!(!doc.to_string().contains("#/components/"));
    }

    fn as_doubles(value: Value) -> Value {
        match value {
            Value::Number(n) => json!(n.as_f64()),
            Value::Array(items) => Value::Array(items.into_iter().map(as_doubles).collect()),
            Value::Object(map) => {
                Value::Object(map.into_iter().map(|(k, v)| (k, as_doubles(v))).collect())
            }
            other => other,
        }
    }

    #[test]
    fn the_protobuf_form_carries_the_whole_document() {
        use super::super::gnostic::{self, tests as wire};
        let doc = document(&crontab_registry(), "v1.33.0");
        let (bytes, dropped) = gnostic::document_with_dropped(&doc);
        assert!(dropped.is_empty(), "no protobuf field for {dropped:?}");
        let definitions = wire::named(wire::one(&bytes, 9), 1);
        assert_eq!(
            definitions.len(),
            doc["definitions"].as_object().map_or(0, Map::len)
        );
        for name in [
            "io.k8s.api.core.v1.Pod",
            "io.k8s.api.core.v1.PodSpec",
            "io.k8s.api.core.v1.Container",
            "io.k8s.api.apps.v1.DeploymentSpec",
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "com.example.stable.v1.CronTab",
        ] {
            let Some((_, schema)) = definitions.iter().find(|(n, _)| n == name) else {
                panic!("{name} is not in the protobuf form");
            };
            // Bounds are doubles on the wire: compare numbers as doubles.
            assert_eq!(
                as_doubles(wire::schema_json(schema)),
                as_doubles(doc["definitions"][name].clone()),
                "{name}"
            );
        }
        let paths = wire::named(wire::one(&bytes, 8), 2);
        assert_eq!(paths.len(), doc["paths"].as_object().map_or(0, Map::len));
    }

    #[test]
    fn upstream_extensions_name_served_definitions_and_properties() {
        let doc = document(&Registry::new(), "v1.33.0");
        let mut unknown = Vec::new();
        for name in extensions::definitions() {
            let Some(definition) = doc["definitions"].get(name) else {
                unknown.push(name.to_owned());
                continue;
            };
            for (property, _) in extensions::of(name).map_or(&[][..], |e| &e.properties[..]) {
                if definition["properties"].get(property).is_none() {
                    unknown.push(format!("{name}.{property}"));
                }
            }
        }
        assert!(unknown.is_empty(), "{unknown:?}");
    }

    #[test]
    fn served_kinds_are_tagged_and_named_as_upstream_names_them() {
        let doc = document(&crontab_registry(), "v1.33.0");
        let definitions = &doc["definitions"];
        let tagged = |name: &str| definitions[name]["x-kubernetes-group-version-kind"].clone();
        assert_eq!(
            tagged("io.k8s.api.core.v1.Pod"),
            json!([{"group": "", "version": "v1", "kind": "Pod"}])
        );
        assert_eq!(
            tagged("io.k8s.api.apps.v1.Deployment")[0]["kind"],
            "Deployment"
        );
        assert_eq!(tagged("io.k8s.api.core.v1.PodList")[0]["kind"], "PodList");
        assert_eq!(
            tagged("com.example.stable.v1.CronTab"),
            json!([{"group": "stable.example.com", "version": "v1", "kind": "CronTab"}])
        );
        assert!(
            definitions.get("com.example.stable.v2.CronTab").is_none(),
            "v2 is not served"
        );
        let meta = &definitions["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"];
        assert_eq!(meta["type"], "object");
        assert_eq!(
            meta["properties"]["finalizers"]["x-kubernetes-patch-strategy"],
            "merge"
        );
        let pod_spec = &definitions["io.k8s.api.core.v1.PodSpec"]["properties"];
        assert_eq!(
            pod_spec["containers"]["x-kubernetes-patch-merge-key"],
            "name"
        );
        assert_eq!(
            pod_spec["volumes"]["x-kubernetes-patch-strategy"],
            "merge,retainKeys"
        );
        assert_eq!(
            definitions["io.k8s.api.core.v1.ContainerPort"]["properties"]["containerPort"]["type"],
            "integer"
        );
        assert_eq!(
            definitions["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"],
            "int-or-string"
        );
        assert_eq!(
            definitions["io.k8s.apimachinery.pkg.api.resource.Quantity"]["type"],
            "string"
        );
    }

    #[test]
    fn custom_resources_get_their_schema_with_type_fields() {
        let doc = document(&crontab_registry(), "v1.33.0");
        let crontab = &doc["definitions"]["com.example.stable.v1.CronTab"];
        assert_eq!(crontab["type"], "object");
        let properties = &crontab["properties"];
        assert_eq!(
            properties["metadata"]["$ref"],
            "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        assert_eq!(properties["kind"]["type"], "string");
        let spec = &properties["spec"];
        assert_eq!(spec["required"], json!(["cronSpec"]));
        assert_eq!(spec["properties"]["replicas"]["maximum"], 10);
        assert_eq!(spec["properties"]["replicas"]["default"], 1);
        assert_eq!(
            spec["properties"]["port"],
            json!({"x-kubernetes-int-or-string": true})
        );
        assert!(spec["properties"]["mode"].get("type").is_none());
        assert_eq!(
            properties["status"],
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
        );
        let list = &doc["definitions"]["com.example.stable.v1.CronTabList"];
        assert_eq!(
            list["properties"]["items"]["items"]["$ref"],
            "#/definitions/com.example.stable.v1.CronTab"
        );
    }

    #[test]
    fn paths_carry_every_verb_with_kind_and_action() {
        let doc = document(&crontab_registry(), "v1.33.0");
        let paths = &doc["paths"];
        let pods = &paths["/api/v1/namespaces/{namespace}/pods"];
        assert_eq!(pods["get"]["x-kubernetes-action"], "list");
        assert_eq!(pods["get"]["operationId"], "listCoreV1NamespacedPod");
        assert_eq!(pods["post"]["x-kubernetes-action"], "post");
        assert_eq!(pods["delete"]["x-kubernetes-action"], "deletecollection");
        let pod = &paths["/api/v1/namespaces/{namespace}/pods/{name}"];
        let actions: BTreeSet<_> = ["get", "put", "patch", "delete"]
            .iter()
            .map(|verb| {
                pod[verb]["x-kubernetes-action"]
                    .as_str()
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(actions, BTreeSet::from(["delete", "get", "patch", "put"]));
        assert_eq!(
            pod["patch"]["x-kubernetes-group-version-kind"],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        let takes = |op: &Value, name: &str| {
            op["parameters"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["name"] == name))
        };
        assert!(takes(&pod["patch"], "fieldValidation"));
        assert_eq!(
            paths["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]["put"]
                ["x-kubernetes-group-version-kind"]["kind"],
            "Scale"
        );
        assert_eq!(
            paths["/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}"]["get"]["operationId"],
            "readRbacAuthorizationV1ClusterRole"
        );
        assert_eq!(
            paths["/api/v1/pods"]["get"]["operationId"],
            "listCoreV1PodForAllNamespaces"
        );
        let crontab = &paths["/apis/stable.example.com/v1/namespaces/{namespace}/crontabs/{name}"];
        assert_eq!(
            crontab["get"]["operationId"],
            "readStableExampleComV1NamespacedCronTab"
        );
        assert_eq!(crontab["patch"]["tags"], json!(["stableExampleCom_v1"]));
        // kubectl checks custom resources itself, since their unknown fields are only pruned.
        assert!(!takes(&crontab["patch"], "fieldValidation"));
        assert!(paths
            .get("/apis/stable.example.com/v1/namespaces/{namespace}/crontabs/{name}/status")
            .is_some());
    }
}
