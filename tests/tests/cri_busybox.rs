//! A busybox container through CRI on a lab node's own containerd: the images come from the
//! tarballs `cargo xtask images` builds (imported by the lab, no registry), the container
//! runs inside the node, its output is read back, and everything is stopped and removed.
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use corten_cri::runtime::CriClient;
use corten_tests::lab::{Lab, LabSpec, BUSYBOX_IMAGE, PAUSE_IMAGE};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, ImageStatusRequest, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListContainersRequest, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};

/// The message a CRI log line carries: `<time> <stream> <P|F> <message>`.
fn log_messages(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| line.splitn(4, ' ').nth(3))
        .map(str::to_owned)
        .collect()
}

#[test]
fn busybox_runs_through_cri_inside_a_lab_node() -> anyhow::Result<()> {
    let lab = Lab::up(LabSpec::for_test(&format!("cri-{}", std::process::id()), 1))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run_busybox(&lab))?;
    lab.down_checked()
}

async fn run_busybox(lab: &Lab) -> anyhow::Result<()> {
    let mut cri = CriClient::connect(&lab.containerd_socket(0)).await?;
    let version = cri.version().await?;
    assert_eq!(version.runtime_name, "containerd");

    for image in [PAUSE_IMAGE, BUSYBOX_IMAGE] {
        let status = cri
            .images()
            .image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: image.to_owned(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await?
            .into_inner();
        let found = status
            .image
            .with_context(|| format!("{image} was not imported"))?;
        assert!(found.repo_tags.iter().any(|t| t == image), "{found:?}");
    }

    let uid = uuid_like();
    let log_dir = lab.paths().node_run_dir(0).join("pods").join(&uid);
    std::fs::create_dir_all(&log_dir)?;
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "busybox".to_owned(),
            uid: uid.clone(),
            namespace: "default".to_owned(),
            attempt: 0,
        }),
        // Host network shares the node's UTS namespace too, so no hostname of its own.
        hostname: String::new(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/{}/pod-{uid}", lab.paths().node_cgroup_rel(0).display()),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox = cri
        .runtime()
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;

    let container_config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "hello".to_owned(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX_IMAGE.to_owned(),
            ..Default::default()
        }),
        command: vec!["sh".to_owned(), "-c".to_owned()],
        args: vec!["echo hello-from-corten; ip -4 -o addr show eth0".to_owned()],
        log_path: "hello.log".to_owned(),
        ..Default::default()
    };
    let container = cri
        .runtime()
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(container_config),
            sandbox_config: Some(sandbox_config),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    cri.runtime()
        .start_container(StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .context("StartContainer")?;

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = cri
            .runtime()
            .container_status(ContainerStatusRequest {
                container_id: container.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .context("no container status")?;
        if status.state == ContainerState::ContainerExited as i32 {
            break status;
        }
        if Instant::now() > deadline {
            bail!("the container did not finish: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.exit_code, 0, "{status:?}");
    let log = std::fs::read_to_string(log_dir.join("hello.log"))?;
    let messages = log_messages(&log);
    assert_eq!(
        messages.first().map(String::as_str),
        Some("hello-from-corten"),
        "{log}"
    );
    // Host network: the container sees the node's fabric address.
    let node_address = format!("{}/24", lab.node_ip(0));
    assert!(messages.iter().any(|m| m.contains(&node_address)), "{log}");

    cri.runtime()
        .stop_container(StopContainerRequest {
            container_id: container.clone(),
            timeout: 5,
        })
        .await?;
    cri.runtime()
        .remove_container(RemoveContainerRequest {
            container_id: container,
        })
        .await?;
    cri.runtime()
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await?;
    cri.runtime()
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: sandbox,
        })
        .await?;
    let containers = cri
        .runtime()
        .list_containers(ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    assert!(containers.is_empty(), "{containers:?}");
    let sandboxes = cri
        .runtime()
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    assert!(sandboxes.is_empty(), "{sandboxes:?}");
    Ok(())
}

fn uuid_like() -> String {
    format!("{:08x}-test", std::process::id())
}
