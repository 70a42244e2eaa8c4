"""Frozen, typed settings: the only place Hearth reads its environment."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from hearth.apt_sources import mirror_from_apt_sources
from hearth.errors import ConfigError, InvalidInput
from hearth.network.allowlist import parse_ip_port, parse_pin_key
from hearth.network.pool import SlotPool
from hearth.versions import parse_version
from hearth.vm.types import LifetimeAction, NetworkMode, VmSpec, VmType

_DEFAULT_STATE_DIR = Path("/var/lib/hearth")
_DEFAULT_CACHE_DIR = Path("/var/cache/hearth")
MIB = 1024 * 1024
SQLITE_FILE_NAME = "hearth.db"
# The longest timeoutS / idleTimeoutS a VM may have (30 days); what either may do when it ends.
MAX_TIMEOUT_S = 30 * 24 * 3600
ACTIONS = tuple(action.value for action in LifetimeAction)
N = TypeVar("N", int, float)
T = TypeVar("T")
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


# Where a field of Settings keeps how ``Settings.from_env`` reads it from the environment.
_READ = "hearth.config.read"


def _setting(default: T, read: Callable[[Mapping[str, str]], T], *, secret: bool = False) -> T:
    """A setting's default, and how ``Settings.from_env`` reads it (in the field's metadata), so
    that each variable, its default and its bounds are written once."""
    return field(default=default, repr=not secret, metadata={_READ: read})


def _int(name: str, default: int, low: int, high: int) -> int:
    """An integer from ``name``, within ``[low, high]``."""
    return _setting(default, lambda env: _read_int(env, name, default, low, high))


def _float(name: str, default: float, low: float, high: float) -> float:
    """A number from ``name``, within ``[low, high]``."""
    return _setting(
        default, lambda env: _number(env, name, default, low, high, parse=float, kind="a number")
    )


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` from ``name``."""
    return _setting(default, lambda env: _read_choice(env, name, default, choices))


def _flag(name: str, default: bool) -> bool:
    """A switch from ``name``: "1" on, "0" off."""
    fallback = "1" if default else "0"
    return _setting(default, lambda env: _read_choice(env, name, fallback, ("0", "1")) == "1")


def _text(name: str, default: str) -> str:
    """``name`` as it is (empty stays empty); ``default`` when unset."""
    return _setting(default, lambda env: env.get(name, default))


def _optional_text(name: str) -> str | None:
    """``name`` as it is, or None when unset or empty."""
    return _setting(None, lambda env: env.get(name) or None)


def _key(name: str) -> str | None:
    """A key (base64 of 32 bytes) from ``name``, or None when unset or empty; never shown."""
    return _setting(None, lambda env: _read_key(env, name), secret=True)


def _version(name: str) -> str:
    """A dotted version ("1.2.3") from ``name``, or "" when unset."""
    return _setting("", lambda env: _read_version(env, name))


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything Hearth is configured with, validated once at start."""

    state_dir: Path = _DEFAULT_STATE_DIR
    cache_dir: Path = _DEFAULT_CACHE_DIR
    debian_mirror: str | None = None
    debian_suite: str = _text("HEARTH_DEBIAN_SUITE", "bookworm")
    log_json: bool | None = None
    # Controller
    host: str = "127.0.0.1"
    port: int = _int("HEARTH_PORT", 4000, 1, 65535)
    database_url: str | None = _optional_text("HEARTH_DATABASE_URL")
    admin_key: str | None = field(default=None, repr=False)
    master_key: str | None = _key("HEARTH_MASTER_KEY")
    # What API keys are hashed under (base64 of 32 bytes); default: key-hash.key in the state dir.
    key_hash_secret: str | None = _key("HEARTH_KEY_HASH_SECRET")
    # The largest request body the API reads; a larger one is refused with 413 unread.
    max_body_bytes: int = _int("HEARTH_MAX_BODY_BYTES", MIB, 1024, 1024 * MIB)
    network_mode: str = "user"
    # Which VMM runs the VMs (hearth.vm.select): "qemu" or "firecracker".
    vmm: str = _choice("HEARTH_VMM", "qemu", ("qemu", "firecracker"))
    firecracker_binary: str | None = _optional_text("HEARTH_FIRECRACKER_BIN")
    qemu_accel: str = "auto"
    # How long a cold boot may take to answer healthy (a template's build is one); 0: the VMM's
    # own (QEMU 120 s, Firecracker 30 s). A Browser VM under TCG on a loaded host may need more.
    cold_boot_deadline_s: float = _float("HEARTH_COLD_BOOT_DEADLINE_S", 0.0, 0.0, 3600.0)
    network_pool: str = "169.254.0.0/16"
    template_dir: Path | None = None
    # Quotas: VMs per user and type, Browser VMs host-wide, memory admission.
    max_cli_per_user: int = _int("HEARTH_MAX_CLI_PER_USER", 1, 0, 1000)
    max_browser_per_user: int = _int("HEARTH_MAX_BROWSER_PER_USER", 1, 0, 1000)
    max_browser_vms: int = _int("HEARTH_MAX_BROWSER_VMS", 2, 0, 10000)
    memory_share: float = _float("HEARTH_MEMORY_SHARE", 0.8, 0.01, 1.0)
    # Each user's persistent workspace volume (0: none), and the disk a user may use in all.
    workspace_size_mib: int = _int("HEARTH_WORKSPACE_SIZE_MIB", 8192, 0, 1 << 24)
    user_disk_quota_mib: int = _int("HEARTH_USER_DISK_QUOTA_MIB", 16384, 1, 1 << 26)
    # Warm pool: healthy, unclaimed VMs kept ready per type (0 = off).
    pool_cli: int = _int("HEARTH_POOL_CLI", 0, 0, 100)
    pool_browser: int = _int("HEARTH_POOL_BROWSER", 0, 0, 100)
    # Build the default sizes' restore templates in the background at start (and after an agent
    # rollout changed the images), so the first VM of each type does not wait for one.
    prepare_templates: bool = _flag("HEARTH_PREPARE_TEMPLATES", True)
    default_vcpus: int = 1
    default_mem_mib: int = 512
    browser_vcpus: int = 2
    browser_mem_mib: int = 2048
    # Auth flow: stage deadlines and the generic OIDC provider (issuer as Browser VMs see it).
    login_timeout_s: float = _float("HEARTH_LOGIN_TIMEOUT_S", 600.0, 1.0, 86400.0)
    cli_vm_timeout_s: float = 300.0
    browser_vm_timeout_s: float = 600.0
    # The last stage's: the captured document delivered into the CLI VM and checked there.
    delivery_timeout_s: float = _float("HEARTH_DELIVERY_TIMEOUT_S", 300.0, 1.0, 3600.0)
    # How many view sockets (noVNC) one login may have open at once; the next is refused.
    view_max_viewers: int = _int("HEARTH_VIEW_MAX_VIEWERS", 4, 1, 100)
    oidc_issuer: str | None = None
    oidc_client_id: str = _text("HEARTH_OIDC_CLIENT_ID", "hearth")
    oidc_callback_port: int = _int("HEARTH_OIDC_CALLBACK_PORT", 8765, 1, 65535)
    oidc_upstream_port: int | None = None
    # Browser VM egress during logins: "proxy" (an allowlisting CONNECT proxy per Browser VM) or
    # "off" (no way out at all). The allowlist replaces the provider's own when set; pins map
    # "host[:port]" to the "ip:port" dialled instead of resolving it (like curl --resolve), in
    # every egress proxy; HEARTH_OIDC_UPSTREAM_PORT pins the issuer's address first.
    login_egress: str = _choice("HEARTH_LOGIN_EGRESS", "proxy", ("proxy", "off"))
    login_egress_allow: tuple[str, ...] | None = None
    egress_pins: tuple[tuple[str, str], ...] = ()
    # CLI VMs' way out: "proxy" (an allowlisting CONNECT proxy per CLI VM, reaching the API hosts
    # of the providers delivered into it) or "off" (no way out at all).
    cli_egress: str = _choice("HEARTH_CLI_EGRESS", "proxy", ("proxy", "off"))
    # Commands run in CLI VMs (POST /api/vms/{id}/exec): how many at once per VM (429 past it),
    # and the longest a command may run (its timeoutS; the default when it gives none).
    exec_max_per_vm: int = _int("HEARTH_EXEC_MAX_PER_VM", 16, 1, 1000)
    exec_timeout_s: float = _float("HEARTH_EXEC_TIMEOUT_S", 3600.0, 1.0, 6 * 3600.0)
    # The files API (/api/vms/{id}/files): the largest upload, file or tar, and the most the
    # files of one tar may hold together (413 file_too_large past it, nothing kept).
    files_max_bytes: int = _int("HEARTH_FILES_MAX_BYTES", 1024 * MIB, 1024, 1024**2 * MIB)
    # How long a terminal link (POST /api/vms/{id}/terminal) may wait to be opened; it opens once.
    terminal_link_ttl_s: float = _float("HEARTH_TERMINAL_LINK_TTL_S", 60.0, 1.0, 3600.0)
    # The longest a terminal's shell may run, typed in or not (a command's limit is for commands).
    terminal_timeout_s: float = _float("HEARTH_TERMINAL_TIMEOUT_S", 6 * 3600.0, 1.0, 6 * 3600.0)
    # Runs of the vendor CLIs (POST /api/vms/{id}/runs): the longest one may take (its timeoutS;
    # the default when it gives none), the largest prompt (413 past it), and how many of a
    # run's events are kept for clients that reconnect.
    run_timeout_s: float = _float("HEARTH_RUN_TIMEOUT_S", 3600.0, 1.0, 6 * 3600.0)
    run_prompt_max_bytes: int = _int("HEARTH_RUN_PROMPT_MAX_BYTES", 256 * 1024, 1, 16 * 1024 * 1024)
    run_events_keep: int = _int("HEARTH_RUN_EVENTS_KEEP", 10_000, 100, 10_000_000)
    # Webhooks: receivers on private/loopback addresses (refused unless allowed), how long a
    # delivery is retried, its first retry delay (doubling, with jitter, up to 15 min), and how
    # long one attempt may take.
    webhook_allow_private: bool = _flag("HEARTH_WEBHOOK_ALLOW_PRIVATE", False)
    webhook_retry_for_s: float = _float(
        "HEARTH_WEBHOOK_RETRY_FOR_S", 24 * 3600.0, 3600.0, 30 * 24 * 3600.0
    )
    webhook_backoff_s: float = _float("HEARTH_WEBHOOK_BACKOFF_S", 5.0, 0.01, 600.0)
    webhook_timeout_s: float = _float("HEARTH_WEBHOOK_TIMEOUT_S", 10.0, 1.0, 120.0)
    # The event log keeps this many days of events (those a webhook is still owed stay longer).
    events_keep_days: int = _int("HEARTH_EVENTS_KEEP_DAYS", 30, 1, 3650)
    # Login sessions that ended (completed, failed, timed out, cancelled) are forgotten this
    # long after they ended (hourly: auth/retention.py).
    auth_session_retention_s: float = _float(
        "HEARTH_AUTH_SESSION_RETENTION_S", 30 * 24 * 3600.0, 3600.0, 3650 * 24 * 3600.0
    )
    # Heartbeats: each ready VM's agent is asked /health this often, each ask bounded by the
    # timeout; after this many misses in a row the VM is "unhealthy", and "failed" (torn down)
    # once it has been unhealthy for the deadline. An agent older than the minimum version is
    # shown as outdated ("" : none is).
    heartbeat_interval_s: float = _float("HEARTH_HEARTBEAT_INTERVAL_S", 5.0, 0.05, 3600.0)
    heartbeat_timeout_s: float = _float("HEARTH_HEARTBEAT_TIMEOUT_S", 3.0, 0.05, 120.0)
    heartbeat_misses: int = _int("HEARTH_HEARTBEAT_MISSES", 3, 1, 100)
    unhealthy_deadline_s: float = _float("HEARTH_UNHEALTHY_DEADLINE_S", 300.0, 0.1, 7 * 24 * 3600.0)
    agent_min_version: str = _version("HEARTH_AGENT_MIN_VERSION")
    # A live agent update: how long the new version has to answer healthy before the VM puts
    # the previous one back by itself.
    agent_update_deadline_s: float = _float("HEARTH_AGENT_UPDATE_DEADLINE_S", 60.0, 5.0, 600.0)
    # A credential that expires within this is "expiring" (metrics, credential.expiring); the
    # vault is looked over this often. Documents delivered to running CLI VMs (whose CLIs
    # refresh them) are pulled back into the vault this often, and before a VM is destroyed.
    credential_expiring_s: float = _float(
        "HEARTH_CREDENTIAL_EXPIRING_S", 24 * 3600.0, 60.0, 90 * 24 * 3600.0
    )
    credential_check_interval_s: float = _float(
        "HEARTH_CREDENTIAL_CHECK_INTERVAL_S", 60.0, 0.05, 24 * 3600.0
    )
    pullback_interval_s: float = _float("HEARTH_PULLBACK_INTERVAL_S", 900.0, 0.05, 7 * 24 * 3600.0)
    # The agent in a CLI VM refreshes an oidc document this long before its access token
    # expires.
    oidc_refresh_margin_s: float = _float("HEARTH_OIDC_REFRESH_MARGIN_S", 60.0, 0.0, 86_400.0)
    # Lifetimes of users' CLI VMs (hearth.control.lifetimes), the defaults of a create's
    # timeoutS and idleTimeoutS (0: none) and what each does; how often they are checked.
    vm_timeout_s: int = _int("HEARTH_VM_TIMEOUT_S", 0, 0, MAX_TIMEOUT_S)
    vm_timeout_action: str = _choice("HEARTH_VM_TIMEOUT_ACTION", "destroy", ACTIONS)
    vm_idle_timeout_s: int = _int("HEARTH_VM_IDLE_TIMEOUT_S", 0, 0, MAX_TIMEOUT_S)
    vm_idle_action: str = _choice("HEARTH_VM_IDLE_ACTION", "pause", ACTIONS)
    lifetime_check_interval_s: float = _float("HEARTH_LIFETIME_CHECK_INTERVAL_S", 5.0, 0.05, 3600.0)
    # Benchmarks and tests only: forward each Browser VM's Chromium DevTools to a loopback port,
    # where any local process could drive the login browser. Off, nothing but VNC is forwarded.
    browser_devtools: bool = _flag("HEARTH_BROWSER_DEVTOOLS", False)

    def vm_spec(
        self, vm_type: VmType, vcpus: int | None = None, mem_mib: int | None = None
    ) -> VmSpec:
        """The spec of a VM of ``vm_type``: the sizes asked, else this type's defaults. A CLI
        VM starts with a slot of the workspace's size, which the user's workspace takes at the
        hand-out without a hot-plug."""
        browser = vm_type is VmType.BROWSER
        return VmSpec(
            vm_type=vm_type,
            vcpus=vcpus or (self.browser_vcpus if browser else self.default_vcpus),
            mem_mib=mem_mib or (self.browser_mem_mib if browser else self.default_mem_mib),
            network=NetworkMode(self.network_mode),
            volume_slot_mib=0 if browser else self.workspace_size_mib,
        )

    @property
    def images_dir(self) -> Path:
        """Where built images live, one directory per recipe."""
        return self.state_dir / "images"

    @property
    def sqlite_path(self) -> Path:
        """Where the default SQLite database lives (used unless ``database_url`` is set)."""
        return self.state_dir / SQLITE_FILE_NAME

    def database(self) -> str:
        """The database URL: ``HEARTH_DATABASE_URL`` or a SQLite file in the state dir."""
        return self.database_url or f"sqlite+aiosqlite:///{self.sqlite_path}"

    def prepare_state_dir(self) -> None:
        """Create the state dir owner-only (0700) and make the files in it owner-only (0600).

        Also when it already existed: ``setup.sh``, image builds or an older Hearth may have made
        it with the default 0755 and left the database, logs and key files 0644. The default
        SQLite file is created 0600 before SQLite opens it, so its ``-wal`` and ``-shm`` files,
        which SQLite creates with the database's mode, are private from their first byte.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state_dir.chmod(0o700)
        if self.database_url is None:
            os.close(os.open(self.sqlite_path, os.O_CREAT | os.O_WRONLY, 0o600))
        for path in self.state_dir.iterdir():
            if path.is_file() and not path.is_symlink():
                path.chmod(0o600)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``HEARTH_*`` variables (or the given mapping) into validated settings."""
        env = os.environ if env is None else env
        state_dir = Path(env.get("HEARTH_STATE_DIR", str(_DEFAULT_STATE_DIR)))
        cache_dir = Path(env.get("HEARTH_CACHE_DIR", str(_DEFAULT_CACHE_DIR)))
        for name, value in (("HEARTH_STATE_DIR", state_dir), ("HEARTH_CACHE_DIR", cache_dir)):
            if not value.is_absolute():
                raise ConfigError(f"{name} must be an absolute path, got {str(value)!r}")
        mirror = env.get("HEARTH_DEBIAN_MIRROR") or None
        if mirror is not None and not re.match(r"^(https?|file)://", mirror):
            raise ConfigError("HEARTH_DEBIAN_MIRROR must be an http(s):// or file:// URL")
        log_format = env.get("HEARTH_LOG_FORMAT", "auto")
        if log_format not in {"auto", "json", "console"}:
            raise ConfigError("HEARTH_LOG_FORMAT must be one of auto, json, console")
        admin_key = env.get("HEARTH_ADMIN_KEY") or None
        if admin_key is not None and not (32 <= len(admin_key) <= 512 and admin_key.isprintable()):
            raise ConfigError("HEARTH_ADMIN_KEY must be 32 to 512 printable characters")
        qemu_accel = env.get("HEARTH_QEMU_ACCEL", "auto")
        if qemu_accel not in {"auto", "kvm", "tcg"}:
            raise ConfigError("HEARTH_QEMU_ACCEL must be auto, kvm or tcg")
        network_mode = env.get("HEARTH_NETWORK_MODE", "user")
        if network_mode not in {"user", "netns"}:
            raise ConfigError("HEARTH_NETWORK_MODE must be user or netns")
        oidc_issuer = env.get("HEARTH_OIDC_ISSUER") or None
        upstream_port = (
            _read_int(env, "HEARTH_OIDC_UPSTREAM_PORT", 0, 1, 65535)
            if env.get("HEARTH_OIDC_UPSTREAM_PORT")
            else None
        )
        read = {f.name: f.metadata[_READ](env) for f in fields(cls) if _READ in f.metadata}
        _check_workspace_fits(read["workspace_size_mib"], read["user_disk_quota_mib"])
        return cls(
            state_dir=state_dir,
            cache_dir=cache_dir,
            debian_mirror=mirror,
            log_json=None if log_format == "auto" else log_format == "json",
            host=_host(env.get("HEARTH_HOST") or "127.0.0.1"),
            admin_key=admin_key,
            network_mode=network_mode,
            qemu_accel=qemu_accel,
            network_pool=_pool(env.get("HEARTH_NETWORK_POOL") or "169.254.0.0/16", state_dir),
            template_dir=Path(env["HEARTH_TEMPLATE_DIR"])
            if env.get("HEARTH_TEMPLATE_DIR")
            else None,
            oidc_issuer=oidc_issuer,
            oidc_upstream_port=upstream_port,
            login_egress_allow=(
                _list(env["HEARTH_LOGIN_EGRESS_ALLOW"])
                if env.get("HEARTH_LOGIN_EGRESS_ALLOW")
                else None
            ),
            egress_pins=(
                _issuer_pin(oidc_issuer, upstream_port) + _pins(env.get("HEARTH_EGRESS_PINS", ""))
            ),
            **read,
        )

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields changed (for the CLI's flags and for tests)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def resolve_debian_mirror(self) -> str:
        """The Debian mirror for debootstrap: the configured one, else the host's apt source."""
        if self.debian_mirror:
            return self.debian_mirror
        found = mirror_from_apt_sources(self.debian_suite)
        if found is None:
            raise ConfigError(
                "no Debian mirror found in the host's apt sources; set HEARTH_DEBIAN_MIRROR"
            )
        return found


def _host(host: str) -> str:
    """``HEARTH_HOST``, an IP address or a host name (empty reaches here as 127.0.0.1: to the
    server, an empty host means every interface)."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return host
    if not _HOST_NAME.fullmatch(host) or len(host) > 253:
        raise ConfigError(f"HEARTH_HOST must be an IP address or a host name, got {host!r}")
    return host


def _pool(cidr: str, state_dir: Path) -> str:
    """``HEARTH_NETWORK_POOL`` checked as the VMs' slot pool will read it."""
    try:
        SlotPool(cidr=cidr, claims_dir=state_dir / "net" / "slots")
    except InvalidInput as exc:
        raise ConfigError(f"HEARTH_NETWORK_POOL: {exc}") from None
    return cidr


def _check_workspace_fits(workspace_mib: int, quota_mib: int) -> None:
    """With workspaces on, a user's workspace and one new VM's own layer must fit the quota,
    else every VM with a workspace is refused."""
    # Imported here: ``hearth.control`` imports the store, which imports this module.
    from hearth.control.disk_use import NEW_VM_LAYER_MIB

    if workspace_mib and workspace_mib + NEW_VM_LAYER_MIB > quota_mib:
        raise ConfigError(
            f"HEARTH_WORKSPACE_SIZE_MIB ({workspace_mib}) plus a new VM's own layer "
            f"({NEW_VM_LAYER_MIB} MiB) exceeds HEARTH_USER_DISK_QUOTA_MIB ({quota_mib})"
        )


def _read_key(env: Mapping[str, str], name: str) -> str | None:
    """``env[name]`` checked as the vault and the key guard will read it (base64 of 32 bytes),
    or None when unset or empty; ConfigError naming ``name``, never the value."""
    # Imported here: ``hearth.credentials`` imports the store, which imports this module.
    from hearth.credentials.keys import decode_master_key

    value = env.get(name) or None
    if value is not None:
        decode_master_key(value, source=name)
    return value


def _read_version(env: Mapping[str, str], name: str) -> str:
    """``env[name]`` as a dotted version ("1.2.3"), or "" when unset."""
    raw = env.get(name, "").strip()
    if raw and parse_version(raw) is None:
        raise ConfigError(f"{name} must be a version like 0.1.1, got {raw!r}")
    return raw


def _read_int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return _number(env, name, default, low, high, parse=int, kind="an integer")


def _number(
    env: Mapping[str, str],
    name: str,
    default: N,
    low: N,
    high: N,
    *,
    parse: Callable[[str], N],
    kind: str,
) -> N:
    """``env[name]`` parsed and within ``[low, high]``; ``default`` when unset or empty."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _read_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    """``env[name]``, one of ``choices``; ``default`` when unset or empty."""
    value = env.get(name) or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _issuer_pin(issuer: str | None, upstream_port: int | None) -> tuple[tuple[str, str], ...]:
    """With ``HEARTH_OIDC_UPSTREAM_PORT``, the issuer's guest address (``10.0.2.x:port``) pinned
    to that forward's host end, ``127.0.0.1:<port>``: a CLI VM's egress proxy dials no private
    address unpinned, and the VM's agent refreshes its ``oidc`` document there. A pin of
    ``HEARTH_EGRESS_PINS`` for the same name comes later and wins."""
    if not issuer or upstream_port is None:
        return ()
    try:
        target = urlsplit(issuer)
        port = target.port or (443 if target.scheme == "https" else 80)
    except ValueError:
        return ()  # not a URL: the login refuses it (hearth.auth.providers)
    if not target.hostname:
        return ()
    return ((f"{target.hostname}:{port}", f"127.0.0.1:{upstream_port}"),)


def _pins(raw: str) -> tuple[tuple[str, str], ...]:
    pins = []
    for item in _list(raw):
        name, equals, target = item.partition("=")
        if not equals or not name.strip() or not target.strip():
            raise ConfigError(
                f"HEARTH_EGRESS_PINS entries must be host[:port]=ip:port, got {item!r}"
            )
        try:
            parse_pin_key(name)
            parse_ip_port(target, what="pin target")
        except InvalidInput as exc:
            raise ConfigError(f"HEARTH_EGRESS_PINS: {exc}") from None
        pins.append((name.strip(), target.strip()))
    return tuple(pins)
