package clientapi

import "github.com/gorilla/mux"

func (a *API) typingRoutes(r *mux.Router) {}
