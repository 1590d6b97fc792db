"""Trust: spaces with a tenant directory, enforcement on receive, authentication, key grants."""
