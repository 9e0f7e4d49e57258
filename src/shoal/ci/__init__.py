"""CI integrations that drive shoal VMs from the outside (the GitLab custom executor driver)."""
