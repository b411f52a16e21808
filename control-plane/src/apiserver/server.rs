//! HTTPS and routing: TLS with optional client certificates (the identity is the
//! certificate's CN and O fields) or service-account bearer tokens (checked by
//! [`super::serviceaccount_token`]), HTTP/1.1 and HTTP/2, request parsing into the resource,
//! namespace, name and verb (kube-apiserver's RequestInfo), and responses: JSON objects,
//! Tables, watch streams, and `Status` for every failure.
//!
//! Owns the wire; it must not hold resource semantics (those are in [`super::rest`]).
use std::{collections::HashMap, convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::{
    body::{Frame, Incoming},
    header::{HeaderValue, ACCEPT, CONTENT_TYPE},
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::{
    discovery, openapi, protobuf,
    resources::{Check, ResourceDef},
    rest::{PatchKind, Query, Rest, ScaleChange},
    serviceaccount_token,
    status::ApiError,
    table, watch,
};

/// Largest request body accepted (kube-apiserver's limit).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name (certificate CN).
    pub user: String,
    /// The groups (certificate O fields).
    pub groups: Vec<String>,
}

/// What every connection shares.
#[derive(Debug)]
pub struct ServerState {
    /// The REST layer.
    pub rest: Rest,
    /// `host:port` clients use to reach this server.
    pub address: String,
    /// The version document.
    pub version: Value,
    /// Issues the `serviceaccounts/NAME/token` subresource's tokens and authenticates bearer
    /// tokens.
    pub tokens: super::serviceaccount_token::ServiceAccountTokens,
    /// Asks kubelets for what they serve (`pods/log`, `pods/exec`, `nodes/proxy`, ...).
    pub kubelet: super::kubelet_proxy::KubeletClient,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(code: u16, value: &Value, content_type: &str) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(full(body));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

fn ok(value: &Value) -> Response<Body> {
    json_response(200, value, "application/json")
}

fn error(err: &ApiError) -> Response<Body> {
    json_response(err.code, &err.status(), "application/json")
}

fn text(code: u16, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The identity in a client certificate chain (leaf first), if any.
pub fn identity_of(certs: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> Option<Identity> {
    let leaf = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let subject = cert.subject();
    let user = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(Identity { user, groups })
}

/// Serves HTTPS on `listener` until the process ends.
pub async fn serve(state: Arc<ServerState>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!("accept failed: {err}");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(err) => {
                    debug!(%peer, "TLS handshake failed: {err}");
                    return;
                }
            };
            let identity = identity_of(tls.get_ref().1.peer_certificates());
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                let identity = identity.clone();
                async move { Ok::<_, Infallible>(route(&state, identity.as_ref(), peer, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(err) = connection.await {
                debug!(%peer, "connection ended: {err}");
            }
        });
    }
}

/// Parsed path and query of a resource request.
#[derive(Debug, Default)]
struct Target {
    group: String,
    version: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
    /// How many path segments follow a `proxy` subresource (`nodes/NAME/proxy/a/b`: 2).
    proxy_tail: usize,
}

/// Parses `/api/v1/...` or `/apis/G/V/...` after the group version.
fn parse_target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let mut target = Target {
        group: group.to_owned(),
        version: version.to_owned(),
        ..Target::default()
    };
    let rest = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => {
            target.namespace = Some((*ns).to_owned());
            match tail {
                // `namespaces/NAME/status` and `/finalize` are subresources of the namespace.
                ["status"] | ["finalize"] if group.is_empty() => {
                    target.resource = "namespaces".to_owned();
                    target.name = Some((*ns).to_owned());
                    target.namespace = None;
                    target.subresource = Some(tail[0].to_owned());
                    return Some(target);
                }
                _ => tail,
            }
        }
        other => other,
    };
    match rest {
        [resource] => target.resource = (*resource).to_owned(),
        [resource, name] => {
            target.resource = (*resource).to_owned();
            target.name = Some((*name).to_owned());
        }
        [resource, name, sub] => {
            target.resource = (*resource).to_owned();
            target.name = Some((*name).to_owned());
            target.subresource = Some((*sub).to_owned());
        }
        // A proxy subresource takes the rest of the path (`nodes/NAME/proxy/stats/summary`).
        [resource, name, "proxy", tail @ ..] => {
            target.resource = (*resource).to_owned();
            target.name = Some((*name).to_owned());
            target.subresource = Some("proxy".to_owned());
            target.proxy_tail = tail.len();
        }
        _ => return None,
    }
    Some(target)
}

/// What follows the first `skip` non-empty segments of the raw request `path`, as sent
/// (empty segments and a trailing `/` kept): the path a proxy subresource forwards.
fn after_segments(path: &str, skip: usize) -> &str {
    if skip == 0 {
        return path;
    }
    let mut offset = 0;
    let mut seen = 0;
    for segment in path.split('/') {
        let end = offset + segment.len();
        if !segment.is_empty() {
            seen += 1;
            if seen == skip {
                return &path[end..];
            }
        }
        offset = end + 1;
    }
    ""
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err)
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large(MAX_BODY_BYTES))
        }
        Err(err) => Err(ApiError::bad_request(format!(
            "reading the request body: {err}"
        ))),
    }
}

/// The media types a request body may be in (kube-apiserver's list for built-in types).
pub const BODY_MEDIA_TYPES: &[&str] =
    &["application/json", "application/yaml", protobuf::MEDIA_TYPE];

/// The media types of a custom resource's body: custom resources have no protobuf form.
pub const CUSTOM_BODY_MEDIA_TYPES: &[&str] = &["application/json", "application/yaml"];

/// The media types of a PATCH body.
pub const PATCH_MEDIA_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

/// What a request body is expected to be: protobuf bodies carry no field names, so the
/// decoder must know the type, and may leave it out of their envelope for the endpoint's.
#[derive(Debug, Clone, Copy)]
pub enum BodyType<'a> {
    /// Whatever the body names itself (no default).
    Any,
    /// An object of this resource; a custom resource has no protobuf form (415, as
    /// kube-apiserver answers).
    Object(&'a ResourceDef),
    /// A fixed type: `(apiVersion, kind)` of `DeleteOptions`, `Eviction`, `Binding`, `Scale`.
    Kind(&'a str, &'a str),
}

/// Decodes an untrusted request body by its Content-Type, exactly as every verb with a body
/// does: JSON for `application/json` (and no or any type), YAML for `application/yaml` and
/// `application/apply-patch+yaml`, Kubernetes protobuf for
/// `application/vnd.kubernetes.protobuf` (transcoded to the JSON value the same object
/// would have been, see [`protobuf`]), 415 for anything else, 400 when the body does not
/// decode.
///
/// Public so the fuzz targets in `fuzz/` drive the same code as the router; patch bodies
/// are decoded by [`super::rest::apply_patch`] instead.
pub fn decode_body(body: &[u8], content_type: &str) -> Result<Value, ApiError> {
    decode_typed_body(body, content_type, BodyType::Any)
}

/// [`decode_body`] for a body of a known type (the default type of a protobuf body, and 415
/// for protobuf on a custom resource).
pub fn decode_typed_body(
    body: &[u8],
    content_type: &str,
    expected: BodyType<'_>,
) -> Result<Value, ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let custom = matches!(expected, BodyType::Object(def) if matches!(def.check, Check::Schema(_)));
    match media {
        protobuf::MEDIA_TYPE if !custom => {
            let api_version;
            let default = match expected {
                BodyType::Any => None,
                BodyType::Object(def) => {
                    api_version = def.api_version();
                    Some(protobuf::DefaultType {
                        api_version: &api_version,
                        kind: def.kind,
                    })
                }
                BodyType::Kind(api_version, kind) => {
                    Some(protobuf::DefaultType { api_version, kind })
                }
            };
            Ok(protobuf::decode(body, default)?)
        }
        "" | "application/json" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the request body could not be decoded as JSON: {e}"
            ))
        }),
        "application/yaml" | "application/apply-patch+yaml" => serde_yaml::from_slice(body)
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "the request body could not be decoded as YAML: {e}"
                ))
            }),
        other => Err(ApiError::unsupported_media_type(
            other,
            if custom {
                CUSTOM_BODY_MEDIA_TYPES
            } else {
                BODY_MEDIA_TYPES
            },
        )),
    }
}

async fn route(
    state: &ServerState,
    identity: Option<&Identity>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query: Query = req.uri().query().map(parse_query).unwrap_or_default();
    let accept = header(&req, ACCEPT);
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" => return text(200, "ok"),
        "/version" => return ok(&state.version),
        _ => {}
    }
    let bearer;
    let identity = match identity {
        Some(identity) => identity,
        None => match bearer_token(&req) {
            Some(token) => {
                let now = serviceaccount_token::unix_now();
                match state.tokens.authenticate(&state.rest, token, now).await {
                    Ok(authenticated) => {
                        bearer = authenticated;
                        &bearer
                    }
                    Err(err) => {
                        debug!(%peer, %path, "bearer token refused: {err}");
                        return error(&ApiError::unauthorized());
                    }
                }
            }
            None => return error(&ApiError::unauthorized()),
        },
    };
    debug!(user = %identity.user, %peer, method = %req.method(), %path, "request");
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let registry = &state.rest.registry;
    match segments.as_slice() {
        [".well-known", "openid-configuration"] => ok(&state.tokens.openid_configuration()),
        ["openid", "v1", "jwks"] => {
            json_response(200, &state.tokens.jwks(), "application/jwk-set+json")
        }
        ["openapi", "v2"] => {
            let version = state.version["gitVersion"]
                .as_str()
                .unwrap_or("v1.33.0")
                .to_owned();
            let registry = state.rest.registry.clone();
            // Built once per change of the served resources, off the executor.
            let built =
                tokio::task::spawn_blocking(move || openapi::v2_document(&registry, &version))
                    .await;
            let document = match built {
                Ok(document) => document,
                Err(err) => {
                    return error(&ApiError::internal(format!(
                        "building the OpenAPI document: {err}"
                    )))
                }
            };
            let (encoded, content_type) = if openapi::wants_protobuf(&accept) {
                (&document.protobuf, openapi::PROTOBUF_V2_RESPONSE)
            } else {
                (&document.json, "application/json")
            };
            // kubectl's HTTP cache revalidates with the ETag before every apply.
            let fresh = encoded.matches(&header(&req, hyper::header::IF_NONE_MATCH));
            let mut response = Response::new(full(if fresh {
                Bytes::new()
            } else {
                encoded.body.clone()
            }));
            if fresh {
                *response.status_mut() = StatusCode::NOT_MODIFIED;
            }
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            headers.insert(hyper::header::VARY, HeaderValue::from_static("Accept"));
            if let Ok(etag) = HeaderValue::from_str(&encoded.etag) {
                headers.insert(hyper::header::ETAG, etag);
            }
            response
        }
        ["openapi", "v3"] => ok(&openapi::v3_index(registry)),
        ["openapi", "v3", rest @ ..] => {
            let version = state.version["gitVersion"].as_str().unwrap_or("v1.33.0");
            openapi::v3_group_version(registry, &rest.join("/"), version)
                .map_or_else(|| error(&ApiError::no_route(&path)), |d| ok(&d))
        }
        ["api"] => match discovery::aggregated_version(&accept) {
            Some(v) => json_response(
                200,
                &discovery::aggregated(registry, true, v),
                &discovery::aggregated_content_type(v),
            ),
            None => ok(&discovery::core_versions(&state.address)),
        },
        ["apis"] => match discovery::aggregated_version(&accept) {
            Some(v) => json_response(
                200,
                &discovery::aggregated(registry, false, v),
                &discovery::aggregated_content_type(v),
            ),
            None => ok(&discovery::group_list(registry)),
        },
        ["api", "v1"] => discovery::resource_list(registry, "", "v1")
            .map_or_else(|| error(&ApiError::no_route(&path)), |d| ok(&d)),
        ["apis", group] => discovery::group(registry, group)
            .map_or_else(|| error(&ApiError::no_route(&path)), |d| ok(&d)),
        ["apis", group, version] => discovery::resource_list(registry, group, version)
            .map_or_else(|| error(&ApiError::no_route(&path)), |d| ok(&d)),
        ["api", "v1", rest @ ..] => {
            resource(state, "", "v1", rest, &path, query, &accept, req).await
        }
        ["apis", group, version, rest @ ..] => {
            let (group, version) = ((*group).to_owned(), (*version).to_owned());
            resource(state, &group, &version, rest, &path, query, &accept, req).await
        }
        _ => error(&ApiError::no_route(&path)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    state: &ServerState,
    group: &str,
    version: &str,
    rest: &[&str],
    path: &str,
    query: Query,
    accept: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(target) = parse_target(group, version, rest) else {
        return error(&ApiError::no_route(path));
    };
    let Some(def) = state
        .rest
        .registry
        .find(&target.group, &target.version, &target.resource)
    else {
        return error(&ApiError::no_route(path));
    };
    if !def.namespaced && target.namespace.is_some() && target.subresource.is_none() {
        return error(&ApiError::no_route(path));
    }
    let namespace = if def.namespaced {
        target.namespace.clone()
    } else {
        None
    };
    if let Some(sub) = target.subresource.as_deref() {
        if !def.subresources.contains(&sub) {
            return error(&ApiError::no_route(path));
        }
        let Some(name) = target.name.clone() else {
            return error(&ApiError::no_route(path));
        };
        if sub == "proxy" {
            if !def.namespaced && target.namespace.is_some() {
                return error(&ApiError::no_route(path));
            }
            let segments = path.split('/').filter(|s| !s.is_empty()).count();
            let subpath = after_segments(path, segments.saturating_sub(target.proxy_tail));
            return super::kubelet_proxy::node_proxy(
                &state.rest,
                &state.kubelet,
                &name,
                subpath,
                req,
            )
            .await
            .unwrap_or_else(|err| error(&err));
        }
        return subresource(state, &def, namespace.as_deref(), &name, sub, query, req).await;
    }
    let wants_table = table::wants_table(accept);
    let include = query
        .get("includeObject")
        .cloned()
        .unwrap_or_else(|| "Metadata".to_owned());
    let content_type = header(&req, CONTENT_TYPE);
    let rest = &state.rest;
    let method = req.method().clone();
    let watching = query.get("watch").is_some_and(|w| query_bool(w));
    let serve = async {
        match (method, target.name.as_deref()) {
            (Method::GET, None) if watching => {
                let lines = watch::start(rest, &def, namespace.as_deref(), &query).await?;
                Ok(watch_response(
                    lines,
                    wants_table.then(|| (def.clone(), include.clone())),
                ))
            }
            (Method::GET, Some(name)) if watching => {
                let mut query = query.clone();
                query.insert("fieldSelector".into(), format!("metadata.name={name}"));
                let lines = watch::start(rest, &def, namespace.as_deref(), &query).await?;
                Ok(watch_response(
                    lines,
                    wants_table.then(|| (def.clone(), include.clone())),
                ))
            }
            (Method::GET, None) if !wants_table => {
                match rest.list_raw(&def, namespace.as_deref(), &query).await? {
                    Some(bytes) => {
                        let mut response = Response::new(full(bytes));
                        response
                            .headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                        Ok(response)
                    }
                    None => Ok(ok(&rest.list(&def, namespace.as_deref(), &query).await?)),
                }
            }
            (Method::GET, None) => {
                let list = rest.list(&def, namespace.as_deref(), &query).await?;
                if wants_table {
                    let items = list["items"].as_array().cloned().unwrap_or_default();
                    let t = table::table(&def, &items, list["metadata"].clone(), &include);
                    Ok(json_response(200, &t, table::TABLE_CONTENT_TYPE))
                } else {
                    Ok(ok(&list))
                }
            }
            (Method::GET, Some(name)) => {
                let obj = rest.get(&def, namespace.as_deref(), name).await?;
                if wants_table {
                    let rv = obj
                        .pointer("/metadata/resourceVersion")
                        .cloned()
                        .unwrap_or(Value::Null);
                    let t = table::table(
                        &def,
                        std::slice::from_ref(&obj),
                        json!({"resourceVersion": rv}),
                        &include,
                    );
                    Ok(json_response(200, &t, table::TABLE_CONTENT_TYPE))
                } else {
                    Ok(ok(&obj))
                }
            }
            (Method::POST, None) => {
                let body = read_body(req).await?;
                let obj = decode_typed_body(&body, &content_type, BodyType::Object(&def))?;
                let created = rest.create(&def, namespace.as_deref(), obj, &query).await?;
                Ok(json_response(201, &created, "application/json"))
            }
            (Method::PUT, Some(name)) => {
                let name = name.to_owned();
                let body = read_body(req).await?;
                let obj = decode_typed_body(&body, &content_type, BodyType::Object(&def))?;
                Ok(ok(&rest
                    .update(&def, namespace.as_deref(), &name, obj, &query)
                    .await?))
            }
            (Method::PATCH, Some(name))
                if content_type.starts_with("application/apply-patch+yaml") =>
            {
                let name = name.to_owned();
                let body = read_body(req).await?;
                let config = decode_typed_body(&body, &content_type, BodyType::Object(&def))?;
                let (code, obj) = rest
                    .server_side_apply(&def, namespace.as_deref(), &name, config, &query)
                    .await?;
                Ok(json_response(code, &obj, "application/json"))
            }
            (Method::PATCH, Some(name)) => {
                let name = name.to_owned();
                let kind = PatchKind::from_content_type(&content_type).ok_or_else(|| {
                    ApiError::unsupported_media_type(&content_type, PATCH_MEDIA_TYPES)
                })?;
                let body = read_body(req).await?;
                Ok(ok(&rest
                    .patch(&def, namespace.as_deref(), &name, kind, &body, &query)
                    .await?))
            }
            (Method::DELETE, Some(name)) => {
                let name = name.to_owned();
                let body = read_body(req).await?;
                let options = if body.is_empty() {
                    None
                } else {
                    let api_version = def.api_version();
                    let options = BodyType::Kind(&api_version, "DeleteOptions");
                    Some(decode_typed_body(&body, &content_type, options)?)
                };
                Ok(ok(&rest
                    .delete(&def, namespace.as_deref(), &name, options, &query)
                    .await?))
            }
            (Method::DELETE, None) => Ok(ok(&rest
                .delete_collection(&def, namespace.as_deref(), &query)
                .await?)),
            (method, _) => Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource: {method}"
            ))),
        }
    };
    let (result, warnings) = super::rest::WARNINGS
        .scope(std::cell::RefCell::new(Vec::new()), async {
            let result: Result<Response<Body>, ApiError> = serve.await;
            let warnings = super::rest::WARNINGS.with(|w| w.take());
            (result, warnings)
        })
        .await;
    let mut response = result.unwrap_or_else(|err| error(&err));
    for warning in warnings {
        // RFC 7234 warn-code 299: a miscellaneous persistent warning, as kube-apiserver sends.
        let text = format!("299 - {}", serde_json::Value::from(warning));
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(hyper::header::WARNING, value);
        }
    }
    response
}

/// Requests on `/status`, `/scale`, `/binding`, `/eviction`, `/token`, `/log`, `/exec`,
/// `/attach` and `/portforward` (`/proxy` is answered by [`resource`], which has the raw
/// path).
async fn subresource(
    state: &ServerState,
    def: &super::resources::ResourceDef,
    namespace: Option<&str>,
    name: &str,
    sub: &str,
    query: Query,
    req: Request<Incoming>,
) -> Response<Body> {
    let rest = &state.rest;
    let content_type = header(&req, CONTENT_TYPE);
    let method = req.method().clone();
    if sub == "token" {
        return token_request(state, namespace, name, &content_type, req).await;
    }
    if sub == "exec" || sub == "attach" || sub == "portforward" {
        if method != Method::GET && method != Method::POST {
            return error(&ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource: {method}"
            )));
        }
        let namespace = namespace.unwrap_or("default");
        return super::kubelet_streams::pod_stream(rest, &state.kubelet, namespace, name, sub, req)
            .await
            .unwrap_or_else(|err| error(&err));
    }
    if sub == "log" {
        if method != Method::GET {
            return error(&ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource: {method}"
            )));
        }
        let namespace = namespace.unwrap_or("default");
        return super::kubelet_proxy::pod_log(rest, &state.kubelet, namespace, name, &query)
            .await
            .unwrap_or_else(|err| error(&err));
    }
    let result: Result<Value, ApiError> = async {
        match (sub, method) {
            ("status", Method::GET) => rest.get(def, namespace, name).await,
            ("status", Method::PUT) => {
                let body = read_body(req).await?;
                let body = decode_typed_body(&body, &content_type, BodyType::Object(def))?;
                rest.update_status(def, namespace, name, body, &query).await
            }
            ("status", Method::PATCH) => {
                let kind = PatchKind::from_content_type(&content_type).ok_or_else(|| {
                    ApiError::unsupported_media_type(&content_type, PATCH_MEDIA_TYPES)
                })?;
                let body = read_body(req).await?;
                rest.patch_status(def, namespace, name, kind, &body, &query)
                    .await
            }
            ("binding", Method::POST) => {
                let body = read_body(req).await?;
                let body =
                    decode_typed_body(&body, &content_type, BodyType::Kind("v1", "Binding"))?;
                rest.bind(def, namespace, name, body, &query).await
            }
            ("eviction", Method::POST) => {
                let body = read_body(req).await?;
                if !body.is_empty() {
                    let eviction = BodyType::Kind("policy/v1", "Eviction");
                    decode_typed_body(&body, &content_type, eviction)?;
                }
                rest.evict(def, namespace, name, &query).await
            }
            ("scale", Method::GET) => rest.get_scale(def, namespace, name).await,
            ("scale", Method::PUT) => {
                let body = read_body(req).await?;
                let scale = BodyType::Kind("autoscaling/v1", "Scale");
                let body = decode_typed_body(&body, &content_type, scale)?;
                rest.write_scale(def, namespace, name, ScaleChange::Replace(&body), &query)
                    .await
            }
            ("scale", Method::PATCH) => {
                let kind = PatchKind::from_content_type(&content_type).ok_or_else(|| {
                    ApiError::unsupported_media_type(&content_type, PATCH_MEDIA_TYPES)
                })?;
                let body = read_body(req).await?;
                rest.write_scale(
                    def,
                    namespace,
                    name,
                    ScaleChange::Patch(kind, &body),
                    &query,
                )
                .await
            }
            (_, method) => Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource: {method}"
            ))),
        }
    }
    .await;
    match result {
        Ok(value) => ok(&value),
        Err(err) => error(&err),
    }
}

/// POST on `serviceaccounts/NAME/token`: a TokenRequest answered with its token (201).
async fn token_request(
    state: &ServerState,
    namespace: Option<&str>,
    name: &str,
    content_type: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    if req.method() != Method::POST {
        return error(&ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {}",
            req.method()
        )));
    }
    let namespace = namespace.unwrap_or("default").to_owned();
    let result = async {
        let body = read_body(req).await?;
        let expected = BodyType::Kind("authentication.k8s.io/v1", "TokenRequest");
        let request = decode_typed_body(&body, content_type, expected)?;
        let now = serviceaccount_token::unix_now();
        state
            .tokens
            .create(&state.rest, &namespace, name, request, now)
            .await
    }
    .await;
    match result {
        Ok(created) => json_response(201, &created, "application/json"),
        Err(err) => error(&err),
    }
}

/// The token of an `Authorization: Bearer TOKEN` header, if any.
fn bearer_token(req: &Request<Incoming>) -> Option<&str> {
    let value = req
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A chunked response of watch lines; as Tables when the client asked for them.
fn watch_response(
    lines: watch::Lines,
    table: Option<(super::resources::ResourceDef, String)>,
) -> Response<Body> {
    let content_type = if table.is_some() {
        table::TABLE_CONTENT_TYPE
    } else {
        "application/json"
    };
    let stream = tokio_stream::wrappers::ReceiverStream::new(lines).map(move |line| {
        let line = match &table {
            Some((def, include)) => as_table_event(def, include, &line).unwrap_or(line),
            None => line,
        };
        Ok::<_, Infallible>(Frame::data(line))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Rewrites one watch line so its object is a one-row Table (BOOKMARK and ERROR stay).
fn as_table_event(
    def: &super::resources::ResourceDef,
    include: &str,
    line: &[u8],
) -> Option<Bytes> {
    let mut event: Value = serde_json::from_slice(line).ok()?;
    let kind = event.get("type")?.as_str()?.to_owned();
    if kind == "ERROR" || kind == "BOOKMARK" {
        return None;
    }
    let object = event.get("object")?.clone();
    let rv = object
        .pointer("/metadata/resourceVersion")
        .cloned()
        .unwrap_or(Value::Null);
    event["object"] = table::table(def, &[object], json!({"resourceVersion": rv}), include);
    let mut bytes = serde_json::to_vec(&event).ok()?;
    bytes.push(b'\n');
    Some(Bytes::from(bytes))
}

/// A request header as text ("" when absent or not text).
fn header(req: &Request<Incoming>, name: hyper::header::HeaderName) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// A boolean query parameter as kube-apiserver reads it: only `false` (any case) and `0`
/// are false; anything else, even an empty value, is true.
pub fn query_bool(value: &str) -> bool {
    value != "0" && !value.eq_ignore_ascii_case("false")
}

/// Parses a query string.
pub fn parse_query(query: &str) -> HashMap<String, String> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_like_kube_request_info() {
        let t = parse_target("", "v1", &["namespaces", "default", "configmaps", "x"]);
        let t = t.map(|t| (t.namespace, t.resource, t.name));
        assert_eq!(
            t,
            Some((
                Some("default".to_owned()),
                "configmaps".to_owned(),
                Some("x".to_owned())
            ))
        );
        let ns = parse_target("", "v1", &["namespaces", "kube-system"])
            .map(|t| (t.resource, t.name, t.namespace));
        assert_eq!(
            ns,
            Some((
                "namespaces".to_owned(),
                Some("kube-system".to_owned()),
                None
            ))
        );
        let status = parse_target("", "v1", &["namespaces", "a", "status"])
            .map(|t| (t.resource, t.subresource));
        assert_eq!(
            status,
            Some(("namespaces".to_owned(), Some("status".to_owned())))
        );
        assert!(parse_target("", "v1", &["a", "b", "c", "d"]).is_none());
    }

    #[test]
    fn the_proxy_subresource_forwards_the_rest_of_the_path() {
        let segments = ["nodes", "n1", "proxy", "stats", "summary"];
        let proxy = parse_target("", "v1", &segments)
            .map(|t| (t.resource, t.name, t.subresource, t.proxy_tail));
        assert_eq!(
            proxy,
            Some((
                "nodes".to_owned(),
                Some("n1".to_owned()),
                Some("proxy".to_owned()),
                2
            ))
        );
        let bare = parse_target("", "v1", &["nodes", "https:n1:10250", "proxy"])
            .map(|t| (t.name, t.subresource, t.proxy_tail));
        assert_eq!(
            bare,
            Some((
                Some("https:n1:10250".to_owned()),
                Some("proxy".to_owned()),
                0
            ))
        );
        // Another subresource with a longer path is no route.
        assert!(parse_target("", "v1", &["nodes", "n1", "status", "x"]).is_none());
        // The raw path after `/proxy`: the first 5 segments skipped, the rest as sent.
        let path = "/api/v1/nodes/n1/proxy/stats//summary/";
        assert_eq!(after_segments(path, 5), "/stats//summary/");
        assert_eq!(after_segments("/api/v1/nodes/n1/proxy", 5), "");
        assert_eq!(after_segments("/api/v1/nodes/n1/proxy/", 5), "/");
        assert_eq!(
            after_segments("/api/v1//nodes/n1/proxy/metrics", 5),
            "/metrics"
        );
    }

    #[test]
    fn queries_are_percent_decoded() {
        let q = parse_query("labelSelector=app%3Dweb%2Ctier&watch=true");
        assert_eq!(
            q.get("labelSelector").map(String::as_str),
            Some("app=web,tier")
        );
    }
}
