//! Service-account tokens against a real `corten-server`, driven with kube-rs: the
//! `serviceaccounts/NAME/token` subresource (defaults, claims, validation, 404 for a missing
//! ServiceAccount, binding to a pod), the token as a bearer credential (200, and 401 when it
//! is tampered with, for another audience, or once its ServiceAccount or pod is gone), and
//! the OIDC discovery documents that publish the key.
mod support;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::Engine as _;
use k8s_openapi::api::{
    authentication::v1::TokenRequest,
    core::v1::{ConfigMap, Pod, ServiceAccount},
};
use kube::{
    api::{Api, DeleteParams, PostParams},
    config::{AuthInfo, KubeConfigOptions, Kubeconfig},
    Client,
};
use serde_json::{json, Value};
use support::server::{eventually, Server};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const WAIT: Duration = Duration::from_secs(20);

/// A kube-rs client that presents only `token` (no client certificate).
async fn bearer_client(server: &Server, token: &str) -> Result<Client> {
    let mut kubeconfig = Kubeconfig::read_from(server.kubeconfig())?;
    let auth: AuthInfo = serde_json::from_value(json!({"token": token}))?;
    for named in &mut kubeconfig.auth_infos {
        named.auth_info = Some(auth.clone());
    }
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.default_retry = false;
    Ok(Client::try_from(config)?)
}

/// The HTTP code of a kube-rs result (200 for success).
fn code<T>(result: &kube::Result<T>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(kube::Error::Api(status)) => status.code,
        Err(_) => 0,
    }
}

/// The JSON of one part (0 header, 1 claims) of a JWT.
fn jwt_part(token: &str, index: usize) -> Result<Value> {
    let part = token.split('.').nth(index).context("too few parts")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part)?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn token_request(spec: Value) -> Result<TokenRequest> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec,
    }))?)
}

async fn create_sa(client: &Client, name: &str) -> Result<ServiceAccount> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    Ok(sas
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}}))?,
        )
        .await?)
}

async fn token_for(client: &Client, sa: &str, spec: Value) -> Result<kube::Result<TokenRequest>> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let request = token_request(spec)?;
    Ok(sas
        .create_token_request(sa, &PostParams::default(), &request)
        .await)
}

#[tokio::test]
async fn tokens_are_issued_and_authenticate_as_their_service_account() -> Result<()> {
    let server = Server::start(&[]).await?;
    let admin = server.client().await?;
    let sa = create_sa(&admin, "builder").await?;
    let sa_uid = sa
        .metadata
        .uid
        .clone()
        .context("the ServiceAccount has no uid")?;

    // Defaults: the API audience and an hour.
    let issued = token_for(&admin, "builder", json!({})).await??;
    let spec = issued.spec.clone();
    ensure!(spec.audiences == [ISSUER], "{spec:?}");
    ensure!(spec.expiration_seconds == Some(3600), "{spec:?}");
    let status = issued.status.context("no status")?;
    let token = status.token;
    let claims = jwt_part(&token, 1)?;
    ensure!(claims["iss"] == ISSUER, "{claims}");
    ensure!(
        claims["sub"] == "system:serviceaccount:default:builder",
        "{claims}"
    );
    ensure!(claims["aud"] == json!([ISSUER]), "{claims}");
    let (iat, exp) = (claims["iat"].as_i64(), claims["exp"].as_i64());
    ensure!(
        iat.zip(exp).is_some_and(|(iat, exp)| exp - iat == 3600),
        "{claims}"
    );
    ensure!(claims["nbf"] == claims["iat"], "{claims}");
    ensure!(
        claims["jti"].as_str().is_some_and(|j| !j.is_empty()),
        "{claims}"
    );
    ensure!(
        claims["kubernetes.io"]
            == json!({"namespace": "default", "serviceaccount": {"name": "builder", "uid": sa_uid}}),
        "{claims}"
    );
    ensure!(
        Some(status.expiration_timestamp.0.as_second()) == exp,
        "expirationTimestamp {:?} is not exp {exp:?}",
        status.expiration_timestamp
    );
    ensure!(jwt_part(&token, 0)?["alg"] == "ES256");

    // The token authenticates: a read succeeds, as the service account.
    let as_builder = bearer_client(&server, &token).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(as_builder.clone(), "default");
    let listed = configmaps.list(&Default::default()).await;
    ensure!(code(&listed) == 200, "{listed:?}");
    ensure!(
        server
            .log()
            .contains("user=system:serviceaccount:default:builder"),
        "the request was not served as the service account"
    );

    // A tampered token, another audience's token, and no credentials at all: 401.
    let mut claims_changed = claims.clone();
    claims_changed["sub"] = json!("system:serviceaccount:kube-system:admin");
    let forged_payload =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims_changed.to_string());
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    let mut signature_changed = token.clone();
    let last = signature_changed.pop().context("empty token")?;
    signature_changed.push(if last == 'A' { 'B' } else { 'A' });
    let vault = token_for(&admin, "builder", json!({"audiences": ["vault"]})).await??;
    let vault_token = vault.status.context("no status")?.token;
    ensure!(jwt_part(&vault_token, 1)?["aud"] == json!(["vault"]));
    for (what, bad) in [
        ("forged claims", forged.as_str()),
        ("changed signature", signature_changed.as_str()),
        ("another audience", vault_token.as_str()),
        ("not a JWT", "abc.def"),
    ] {
        let client = bearer_client(&server, bad).await?;
        let configmaps: Api<ConfigMap> = Api::namespaced(client, "default");
        let refused = configmaps.list(&Default::default()).await;
        ensure!(code(&refused) == 401, "{what}: {refused:?}");
    }

    // Validation: a missing ServiceAccount is 404, under ten minutes is 422.
    let missing = token_for(&admin, "nobody", json!({})).await?;
    ensure!(code(&missing) == 404, "{missing:?}");
    let short = token_for(&admin, "builder", json!({"expirationSeconds": 599})).await?;
    ensure!(code(&short) == 422, "{short:?}");
    let shortest = token_for(&admin, "builder", json!({"expirationSeconds": 600})).await??;
    ensure!(shortest.spec.expiration_seconds == Some(600));

    // OIDC discovery publishes the key that signed the token.
    let config: Value = serde_json::from_str(
        &admin
            .request_text(http_get("/.well-known/openid-configuration")?)
            .await?,
    )?;
    ensure!(config["issuer"] == ISSUER, "{config}");
    let jwks: Value =
        serde_json::from_str(&admin.request_text(http_get("/openid/v1/jwks")?).await?)?;
    let kid = jwt_part(&token, 0)?["kid"].clone();
    ensure!(jwks["keys"][0]["kid"] == kid, "{jwks} does not hold {kid}");

    // Deleting the ServiceAccount revokes its tokens, even if one of the name comes back.
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    sas.delete("builder", &DeleteParams::default()).await?;
    eventually(
        WAIT,
        "the deleted ServiceAccount's token to be refused",
        || {
            let configmaps = configmaps.clone();
            async move {
                let result = configmaps.list(&Default::default()).await;
                Ok((code(&result) == 401).then_some(()))
            }
        },
    )
    .await?;
    create_sa(&admin, "builder").await?;
    let recreated = configmaps.list(&Default::default()).await;
    ensure!(code(&recreated) == 401, "{recreated:?}");
    Ok(())
}

#[tokio::test]
async fn pod_bound_tokens_live_as_long_as_their_pod() -> Result<()> {
    let server = Server::start(&["--disable-controllers"]).await?;
    let admin = server.client().await?;
    let sa = create_sa(&admin, "runner").await?;
    create_sa(&admin, "other").await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "job"},
                "spec": {"serviceAccountName": "runner",
                    "containers": [{"name": "main", "image": "corten/busybox:1"}]},
            }))?,
        )
        .await?;
    let pod_uid = pod.metadata.uid.context("the pod has no uid")?;

    let bound = |uid: &str| json!({"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "job", "uid": uid}});
    let issued = token_for(&admin, "runner", bound(&pod_uid)).await??;
    let token = issued.status.context("no status")?.token;
    let claims = jwt_part(&token, 1)?;
    ensure!(
        claims["kubernetes.io"]["pod"] == json!({"name": "job", "uid": pod_uid}),
        "{claims}"
    );
    ensure!(
        claims["kubernetes.io"]["serviceaccount"]["uid"]
            == json!(sa.metadata.uid.unwrap_or_default()),
        "{claims}"
    );

    // Another uid than the pod's is a conflict; another service account's pod is refused;
    // a kind that cannot be bound is refused; a missing pod is 404.
    let stale = token_for(&admin, "runner", bound("not-the-uid")).await?;
    ensure!(code(&stale) == 409, "{stale:?}");
    let foreign = token_for(&admin, "other", bound(&pod_uid)).await?;
    ensure!(code(&foreign) == 400, "{foreign:?}");
    let configmap_ref =
        json!({"boundObjectRef": {"apiVersion": "v1", "kind": "ConfigMap", "name": "x"}});
    let unbindable = token_for(&admin, "runner", configmap_ref).await?;
    ensure!(code(&unbindable) == 400, "{unbindable:?}");
    let no_pod = json!({"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "gone"}});
    let missing = token_for(&admin, "runner", no_pod).await?;
    ensure!(code(&missing) == 404, "{missing:?}");

    let as_runner = bearer_client(&server, &token).await?;
    let own_pods: Api<Pod> = Api::namespaced(as_runner, "default");
    let read = own_pods.get("job").await;
    ensure!(code(&read) == 200, "{read:?}");

    // Once the pod is gone, its token no longer authenticates.
    pods.delete("job", &DeleteParams::default().grace_period(0))
        .await?;
    eventually(WAIT, "the pod to be gone", || {
        let pods = pods.clone();
        async move { Ok(pods.get_opt("job").await?.is_none().then_some(())) }
    })
    .await?;
    let after = own_pods.get("job").await;
    ensure!(code(&after) == 401, "{after:?}");
    Ok(())
}

/// A GET of a non-resource path for `Client::request_text`.
fn http_get(path: &str) -> Result<hyper::Request<Vec<u8>>> {
    Ok(hyper::Request::get(path).body(Vec::new())?)
}
