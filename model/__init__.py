"""The next-word LSTM (Keras) and its LiteRT on-device training artifact."""
