"""The expression classes of the project, in label order: CREMA-D's six emotions, which the synthetic renderer
draws and onto which DFEW's classes are mapped (its seventh, surprise, has none)."""

EXPRESSIONS = ("anger", "disgust", "fear", "happy", "neutral", "sad")
