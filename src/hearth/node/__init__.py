"""The node half of Hearth: what runs VMs on one host (the VMM backend and the images it boots).

The control plane (API, auth flow, store, vault, VM lifecycle records) reaches a node only
through ``hearth.node.interface.Node``. Today the one implementation, ``LocalNode``, is in
process; a later step puts a network between the two halves without the control plane noticing.
"""
