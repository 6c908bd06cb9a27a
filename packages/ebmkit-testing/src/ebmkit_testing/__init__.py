"""ebmkit-testing: conformance kit for ebmkit components."""
