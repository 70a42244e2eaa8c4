"""The QEMU backend: runs on any Linux host, with KVM where usable and TCG otherwise."""
