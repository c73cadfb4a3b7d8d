"""Speaking the APIXO API: the client with its request bucket, breaker and limits,
the key that never prints, and the receiver of the API's callbacks."""
