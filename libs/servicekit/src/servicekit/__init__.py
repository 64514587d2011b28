"""What the three services each need beside their domain, written once: how far a consumer
group is behind (`consumer_lag`), dead-lettering a record a consumer cannot take
(`dead_letters`), and checking a bearer token with the order service that issued it
(`token_verifier`, for the notifier's and the audit service's read APIs)."""
