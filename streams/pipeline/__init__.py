"""The three stages and what runs them: a request's route is generate -> image -> publish, every step recorded by sink."""
