"""The sandbox's fake Microsoft Graph: sendMail, drafts and upload sessions over HTTPS. FOR TESTING ONLY."""
