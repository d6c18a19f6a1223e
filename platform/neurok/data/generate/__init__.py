"""Dataset generation: recipes -> planned sequences -> MuJoCo scenes -> loader shards in a store."""
