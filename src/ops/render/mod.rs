//! `astra-worker render systemd|kubernetes`: the deployment files, generated from `jobs.toml` so schedules
//! and zones have one source of truth. The committed `systemd/` and `deploy/kubernetes/` are this output for
//! the shipped `jobs.toml` (a test keeps them equal).

pub(crate) mod cron;

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{config::Settings, failure::Failure};

/// Where and how the files point.
pub(crate) struct RenderOptions {
    /// The binary's path in the systemd units.
    pub bin: String,
    /// The container image in the Kubernetes manifests.
    pub image: String,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            bin: "/usr/local/bin/astra-worker".into(),
            image: format!("astra-worker:{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

const HEADER: &str = "Rendered by `astra-worker render` from jobs.toml: edit jobs.toml and render again.";

/// The credentials the services load; the HTTP service also its API key.
fn credentials(settings: &Settings, serves: bool) -> Vec<&'static str> {
    let mut c = vec!["ASTRA_CLIENT_ID", "ASTRA_CLIENT_SECRET", "ASTRA_WORKER_TOKEN_KEY"];
    if settings.outbox.endpoint.is_some() {
        c.push("ASTRA_WORKER_OUTBOX_KEY");
    }
    if serves {
        c.push("ASTRA_WORKER_API_KEY");
    }
    c
}

/// The port `serve` listens on in the rendered units and manifests.
const SERVE_PORT: u16 = 8080;

fn hardening(settings: &Settings, serves: bool) -> String {
    let mut s = String::from(
        "# Its own transient user; the SQLite file lives in its state directory.\n\
         DynamicUser=yes\n\
         StateDirectory=astra-worker\n\
         StateDirectoryMode=0700\n\
         WorkingDirectory=/var/lib/astra-worker\n\
         Environment=DATABASE_URL=sqlite:///var/lib/astra-worker/astra-worker.db\n\
         # Secrets arrive as credentials ($CREDENTIALS_DIRECTORY), never in the environment or jobs.toml.\n",
    );
    for c in credentials(settings, serves) {
        s.push_str(&format!("LoadCredential={c}:/etc/astra-worker/credentials/{c}\n"));
    }
    s.push_str(
        "ProtectSystem=strict\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         PrivateDevices=yes\n\
         PrivateUsers=yes\n\
         NoNewPrivileges=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectKernelLogs=yes\n\
         ProtectControlGroups=yes\n\
         ProtectClock=yes\n\
         ProtectHostname=yes\n\
         ProtectProc=invisible\n\
         ProcSubset=pid\n\
         RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n\
         RestrictNamespaces=yes\n\
         RestrictRealtime=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n\
         MemoryDenyWriteExecute=yes\n\
         RemoveIPC=yes\n\
         KeyringMode=private\n\
         DevicePolicy=closed\n\
         SystemCallFilter=@system-service\n\
         SystemCallFilter=~@privileged @resources\n\
         SystemCallArchitectures=native\n\
         SystemCallErrorNumber=EPERM\n\
         CapabilityBoundingSet=\n\
         AmbientCapabilities=\n\
         UMask=0077\n",
    );
    s
}

/// The systemd units: the daemon, the one-shot template, one timer per enabled job.
pub(crate) fn systemd(settings: &Settings, o: &RenderOptions) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let stop = settings.runner.grace_period.as_secs() + 10;
    let harden = hardening(settings, false);
    let mut files = vec![
        (
            PathBuf::from("astra-worker.service"),
            format!(
                "# {HEADER}\n# The daemon: every enabled job on its schedule. Use it or the timers, not both (the slot\n\
                 # ledger makes both harmless, but one is enough).\n\
                 [Unit]\nDescription=astra-worker daemon (every job on its schedule)\n\
                 Wants=network-online.target\nAfter=network-online.target\n\n\
                 [Service]\nType=exec\nExecStart={bin} --config /etc/astra-worker/jobs.toml run\n\
                 Restart=on-failure\nRestartSec=30s\n# 78: configuration or credentials; restarting cannot help.\n\
                 RestartPreventExitStatus=78\nKillSignal=SIGTERM\nTimeoutStopSec={stop}s\n{harden}\n\
                 [Install]\nWantedBy=multi-user.target\n",
                bin = o.bin
            ),
        ),
        (
            PathBuf::from("astra-worker@.service"),
            format!(
                "# {HEADER}\n# One run of one job: `systemctl start astra-worker@token-rotation`, or through its timer.\n\
                 [Unit]\nDescription=astra-worker: run %i once\n\
                 Wants=network-online.target\nAfter=network-online.target\n\
                 StartLimitIntervalSec=6h\nStartLimitBurst=6\n\n\
                 [Service]\nType=oneshot\nExecStart={bin} --config /etc/astra-worker/jobs.toml --run-once %i\n\
                 # 0 done; 75 temporary (Astra or the database unreachable, interrupted): try again soon;\n\
                 # 78 configuration or credentials: stay failed until someone looks.\n\
                 Restart=on-failure\nRestartSec=10min\nRestartPreventExitStatus=78\nSuccessExitStatus=0\n\
                 TimeoutStartSec=2h\nKillSignal=SIGTERM\nTimeoutStopSec={stop}s\n{harden}",
                bin = o.bin
            ),
        ),
        (
            PathBuf::from("astra-worker-serve.service"),
            format!(
                "# {HEADER}\n# The HTTP service: Astra's webhooks and the backend's /v1 routes, on plain HTTP behind a\n\
                 # TLS-terminating proxy (Astra requires its webhook URL to be HTTPS).\n\
                 [Unit]\nDescription=astra-worker service (webhooks, guard, holds, tokens)\n\
                 Wants=network-online.target\nAfter=network-online.target\n\n\
                 [Service]\nType=exec\nExecStart={bin} --config /etc/astra-worker/jobs.toml serve --listen 127.0.0.1:{SERVE_PORT}\n\
                 Restart=on-failure\nRestartSec=5s\nRestartPreventExitStatus=78\nKillSignal=SIGTERM\nTimeoutStopSec={stop}s\n{serve_harden}\n\
                 [Install]\nWantedBy=multi-user.target\n",
                bin = o.bin,
                serve_harden = hardening(settings, true),
            ),
        ),
    ];
    for job in settings.jobs.iter().filter(|j| j.enabled) {
        let s = &job.schedule;
        let cal = cron::to_oncalendar(s.expr(), s.zone().name())
            .map_err(|e| Failure::Config(format!("jobs.{}.schedule: {e}", job.name)))?;
        files.push((
            PathBuf::from(format!("astra-worker-{}.timer", job.name)),
            format!(
                "# {HEADER}\n[Unit]\nDescription=astra-worker: {name} on `{expr}` in {zone}\n\n\
                 [Timer]\nOnCalendar={cal}\n# A run missed while the machine was off starts at boot (the job's catch-up policy decides\n\
                 # which slots it then works on).\nPersistent=true\nRandomizedDelaySec=30s\nFixedRandomDelay=yes\nAccuracySec=1s\n\
                 Unit=astra-worker@{name}.service\n\n[Install]\nWantedBy=timers.target\n",
                name = job.name,
                expr = s.expr(),
                zone = s.zone().name()
            ),
        ));
    }
    Ok(files)
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| if l.is_empty() { String::new() } else { format!("{pad}{l}") }).collect::<Vec<_>>().join("\n")
}

/// The Kubernetes manifests: the configuration as a ConfigMap, one CronJob per enabled job.
pub(crate) fn kubernetes(
    settings: &Settings,
    jobs_toml: &str,
    o: &RenderOptions,
) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let grace = settings.runner.grace_period.as_secs();
    let mut files = vec![(
        PathBuf::from("configmap.yaml"),
        format!(
            "# {HEADER}\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: astra-worker-config\n  labels:\n    app.kubernetes.io/name: astra-worker\ndata:\n  jobs.toml: |\n{}\n",
            indent(jobs_toml.trim_end(), 4)
        ),
    )];
    for job in settings.jobs.iter().filter(|j| j.enabled) {
        let s = &job.schedule;
        let schedule =
            cron::to_kubernetes(s.expr()).map_err(|e| Failure::Config(format!("jobs.{}.schedule: {e}", job.name)))?;
        let deadline = job.max_lateness.num_seconds().min(86_400);
        files.push((
            PathBuf::from(format!("cronjob-{}.yaml", job.name)),
            format!(
                r#"# {HEADER}
# Several pods may work on one slot (set `parallelism` on the Job): the slot ledger in PostgreSQL lets each
# item be claimed once (`for update skip locked`), and the jobs that cannot split their work do it once.
apiVersion: batch/v1
kind: CronJob
metadata:
  name: astra-worker-{name}
  labels:
    app.kubernetes.io/name: astra-worker
    app.kubernetes.io/component: {name}
spec:
  schedule: "{schedule}"
  timeZone: "{zone}"
  concurrencyPolicy: Forbid
  startingDeadlineSeconds: {deadline}
  successfulJobsHistoryLimit: 3
  failedJobsHistoryLimit: 5
  jobTemplate:
    spec:
      backoffLimit: 4
      activeDeadlineSeconds: 7200
      podFailurePolicy:
        rules:
          # 78: configuration or credentials; retrying cannot help.
          - action: FailJob
            onExitCodes:
              containerName: astra-worker
              operator: In
              values: [78]
          # A node drain or preemption is not the job's fault.
          - action: Ignore
            onPodConditions:
              - type: DisruptionTarget
                status: "True"
      template:
        metadata:
          labels:
            app.kubernetes.io/name: astra-worker
            app.kubernetes.io/component: {name}
        spec:
          restartPolicy: Never
          # Above the worker's own grace period ({grace}s) for in-flight work after SIGTERM.
          terminationGracePeriodSeconds: {term}
          automountServiceAccountToken: false
{pod}"#,
                name = job.name,
                zone = s.zone().name(),
                term = grace + 20,
                pod = pod(
                    o,
                    &format!(r#"["--config", "/etc/astra-worker/jobs.toml", "--run-once", "{}"]"#, job.name),
                    ""
                ),
            ),
        ));
    }
    files.push((PathBuf::from("deployment-serve.yaml"), serve_deployment(o, grace)));
    files.push((PathBuf::from("service-serve.yaml"), serve_service()));
    Ok(files)
}

/// A pod's security context, container and volumes, at the indentation of a CronJob's pod spec; `extra` goes
/// into the container (ports, probes).
fn pod(o: &RenderOptions, args: &str, extra: &str) -> String {
    format!(
        r#"          securityContext:
            runAsNonRoot: true
            runAsUser: 65532
            runAsGroup: 65532
            seccompProfile:
              type: RuntimeDefault
          containers:
            - name: astra-worker
              image: {image}
              args: {args}
              env:
                - name: DATABASE_URL
                  valueFrom:
                    secretKeyRef:
                      name: astra-worker
                      key: DATABASE_URL
                - name: CREDENTIALS_DIRECTORY
                  value: /run/secrets/astra-worker
{extra}              securityContext:
                allowPrivilegeEscalation: false
                readOnlyRootFilesystem: true
                capabilities:
                  drop: ["ALL"]
              resources:
                requests:
                  cpu: 50m
                  memory: 64Mi
                limits:
                  memory: 256Mi
              volumeMounts:
                - name: config
                  mountPath: /etc/astra-worker
                  readOnly: true
                - name: secrets
                  mountPath: /run/secrets/astra-worker
                  readOnly: true
          volumes:
            - name: config
              configMap:
                name: astra-worker-config
            - name: secrets
              secret:
                secretName: astra-worker
                defaultMode: 0400
"#,
        image = o.image
    )
}

/// `serve` as a Deployment of two replicas (they share one PostgreSQL inbox; each webhook is processed once).
fn serve_deployment(o: &RenderOptions, grace: u64) -> String {
    let probes = format!(
        r#"              ports:
                - name: http
                  containerPort: {SERVE_PORT}
              readinessProbe:
                httpGet:
                  path: /readyz
                  port: http
                periodSeconds: 5
              livenessProbe:
                httpGet:
                  path: /healthz
                  port: http
                periodSeconds: 10
                failureThreshold: 3
"#
    );
    let spec = pod(
        o,
        &format!(r#"["--config", "/etc/astra-worker/jobs.toml", "serve", "--listen", "0.0.0.0:{SERVE_PORT}"]"#),
        &probes,
    );
    // The CronJob's pod spec sits four spaces deeper than a Deployment's.
    let spec = spec.lines().map(|l| l.strip_prefix("    ").unwrap_or(l)).collect::<Vec<_>>().join("\n");
    format!(
        r#"# {HEADER}
# The HTTP service: Astra's webhooks and the backend's /v1 routes. Plain HTTP: Astra's webhook URL must be
# HTTPS, so put a TLS-terminating Ingress in front of the Service.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: astra-worker-serve
  labels:
    app.kubernetes.io/name: astra-worker
    app.kubernetes.io/component: serve
spec:
  replicas: 2
  selector:
    matchLabels:
      app.kubernetes.io/name: astra-worker
      app.kubernetes.io/component: serve
  template:
    metadata:
      labels:
        app.kubernetes.io/name: astra-worker
        app.kubernetes.io/component: serve
    spec:
      # Above the worker's own grace period ({grace}s) for requests in flight after SIGTERM.
      terminationGracePeriodSeconds: {term}
      automountServiceAccountToken: false
{spec}
"#,
        term = grace + 20
    )
}

fn serve_service() -> String {
    format!(
        r#"# {HEADER}
apiVersion: v1
kind: Service
metadata:
  name: astra-worker-serve
  labels:
    app.kubernetes.io/name: astra-worker
    app.kubernetes.io/component: serve
spec:
  selector:
    app.kubernetes.io/name: astra-worker
    app.kubernetes.io/component: serve
  ports:
    - name: http
      port: 80
      targetPort: http
"#
    )
}

/// Writes the files into `dir` (created if needed).
pub(crate) fn write(dir: &Path, files: &[(PathBuf, String)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
