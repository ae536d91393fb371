"""listkeeper: a mailing-list and mail-delivery engine configured the GitOps way."""

__version__ = "0.1.0"
