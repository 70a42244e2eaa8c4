"""Events: one log of what happened, persisted before it is delivered, and the webhooks it feeds.

* :mod:`~hearth.events.types`: the event names and the delivery statuses.
* :mod:`~hearth.events.log`: ``EventLog``, where services emit events and clients read them.
* :mod:`~hearth.events.signing`: the ``X-Hearth-Signature`` header, made and checked.
* :mod:`~hearth.events.targets`: which webhook URLs are allowed, and where they resolve.
* :mod:`~hearth.events.webhooks`: ``WebhookService``, the admin's webhooks.
* :mod:`~hearth.events.dispatch`: ``WebhookDispatcher``, delivery with retries from the outbox.
"""
