"""The mirror spec: the user's YAML, validated whole into frozen typed values before anything is written."""
